// Train a graphc training step with stock onnxruntime-node: no Python, no training build.
//
//   node train.js DIR [LOSSES.json]
//
// DIR holds step.onnx and step.state.onnx (graphc's Trainer.save) and the batches written by export.py:
// batches.json plus one raw little-endian <input>.bin per input. The state model gives every state input
// (parameters, optimizer slots, step, lr, seed); each step feeds the batch plus the state and takes
// "<name>.updated" back as <name>. Prints the losses; writes them as JSON when LOSSES.json is given.
"use strict";
const fs = require("fs");
const path = require("path");
const ort = require("onnxruntime-node");

const ARRAYS = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array, float64: Float64Array };

function readBatches(dir) {
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, "batches.json"), "utf8"));
  const inputs = Object.entries(manifest.inputs).map(([name, spec]) => {
    const Array = ARRAYS[spec.dtype];
    if (!Array) throw new Error(`input ${name}: dtype ${spec.dtype} is not one of ${Object.keys(ARRAYS)}`);
    const bytes = fs.readFileSync(path.join(dir, spec.file));
    const size = spec.shape.reduce((a, b) => a * b, 1);
    const all = new Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / Array.BYTES_PER_ELEMENT);
    if (all.length !== size * manifest.count) {
      throw new Error(`${spec.file}: ${all.length} elements, expected ${manifest.count} batches of ${size}`);
    }
    return { name, spec, all, size };
  });
  const batches = [];
  for (let i = 0; i < manifest.count; i++) {
    const feeds = {};
    for (const { name, spec, all, size } of inputs) {
      feeds[name] = new ort.Tensor(spec.dtype, all.slice(i * size, (i + 1) * size), spec.shape);
    }
    batches.push(feeds);
  }
  return batches;
}

async function main() {
  const [dir, lossesFile] = process.argv.slice(2);
  if (!dir) throw new Error("usage: node train.js DIR [LOSSES.json]");
  const stateModel = await ort.InferenceSession.create(path.join(dir, "step.state.onnx"));
  const step = await ort.InferenceSession.create(path.join(dir, "step.onnx"));
  let state = await stateModel.run({});              // every state input, by name
  const losses = [];
  for (const batch of readBatches(dir)) {
    const out = await step.run({ ...batch, ...state });
    for (const name of Object.keys(state)) {         // lr and seed have no ".updated": they stay
      if (out[`${name}.updated`] !== undefined) state[name] = out[`${name}.updated`];
    }
    losses.push(Number(out.loss.data[0]));
  }
  console.log(losses.map((l, i) => `step ${i + 1}: loss ${l.toFixed(4)}`).join("\n"));
  if (lossesFile) fs.writeFileSync(lossesFile, JSON.stringify(losses));
}

main().catch((error) => {
  console.error(`train.js: error: ${error.message}`);
  process.exit(1);
});
