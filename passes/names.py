"""Names shared between ``graphc``, ``passes`` and ``runtime``: metadata keys and reserved graph names.

Constants only, no imports: it is the one module of ``passes`` that ``runtime`` may import (the
import rule is written in the README's architecture section and checked by
``tests/test_architecture.py``). A name written in one package and read in another is defined here once.
"""

# ---- model metadata (``model.metadata_props``): written by passes, read by runtime -----------------
STATE_PAIRS_KEY = "graphc.state_pairs"  # JSON [[input, output that feeds it next step], ...]
BATCH_INPUTS_KEY = "graphc.batch_inputs"  # JSON [batch input names]
STATE_INPUTS_KEY = "graphc.state_inputs"  # JSON [every state input of a portable step, in order]

# ---- node metadata (``node.metadata_props``) ------------------------------------------------------
OP_KEY = "graphc.op"  # the graphc operation that emitted the node (e.g. "Tensor.view")
SOURCE_KEY = "graphc.source"  # "file:line" of the user's code that built the node
STOP_GRADIENT_KEY = "graphc.stop_gradient"  # "1" on an Identity that autodiff does not cross
RNG_STREAM_KEY = "graphc.rng_stream"  # "1" on the Constant that numbers a random stream
# "1" on an ``If`` whose then-branch is right whatever the condition (the else-branch is a shortcut for
# when the condition is false): off the CPU the branch is inlined (``runtime/device_branches.py``)
THEN_ALWAYS_RIGHT_KEY = "graphc.then_always_right"

# ---- value metadata (``value.meta``, in memory only) ----------------------------------------------
PARAMETER_KEY = "graphc.parameter"  # the graphc Parameter an initializer holds
LIFTED_KEY = "graphc.lifted_constant"  # an initializer made from a Constant node (not a weight)

# ---- reserved input and output names of a training step -------------------------------------------
LOSS = "loss"  # the first output
STEP = "step"  # int64 scalar input: steps done so far
LR = "lr"  # float64 scalar input: the learning rate, fed per step
SEED = "seed"  # int64 scalar input of a portable step: the dropout key is derived from it and ``step``
RNG_KEY = "rng_key"  # int64 scalar input: the dropout key of this step or run
UPDATED = ".updated"  # suffix: ``<input>.updated`` is the output that feeds ``<input>`` next step
GRAD_CHECK = "grad_check"  # output: 0 when every gradient element is finite, NaN otherwise
GRAD_NORM = "grad_norm"  # output: the global gradient norm (with gradient clipping)

# ---- the data-parallel step (``passes/split_step.py``, ``runtime/distributed_session.py``) ----------
GRAD_SCALE = "grad_scale"  # input of the gradient graph: 1 / world size
REDUCE_BUFFER = "reduce.buffer"  # output of the gradient graph: the buffer to sum across processes
REDUCED = "reduce.buffer.sum"  # input of the update graph: the summed buffer
