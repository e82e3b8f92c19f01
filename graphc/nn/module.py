"""``nn.Module``: PyTorch's module conventions over symbolic tensors.

Assigning a Parameter or Module as an attribute registers it, and names the
parameters by their dotted path (``fc1.weight``): those names become the
graph's initializer names and the ``state_dict`` keys, exactly as in PyTorch,
so a PyTorch ``state_dict`` converted to numpy loads as is.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import numpy as np

from graphc import tensor as _tensor
from graphc.nn.parameter import Parameter


def _to_numpy(value) -> np.ndarray:
    """numpy arrays as they are; torch tensors (duck-typed, torch is never imported) via ``.numpy()``."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class RemovableHandle:
    """What ``register_forward_hook`` returns: ``remove()`` unregisters the hook (also as a context manager)."""

    _ids = itertools.count()

    def __init__(self, hooks: dict):
        self.hooks, self.id = hooks, next(RemovableHandle._ids)

    def remove(self) -> None:
        self.hooks.pop(self.id, None)

    def __enter__(self) -> "RemovableHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class Module:
    """Base class of layers and models, as ``torch.nn.Module``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_scope_name", "")
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning {name!r}")
        if isinstance(value, Parameter):
            self._parameters[name] = value
            value.value.name = name
        elif isinstance(value, Module):
            self._modules[name] = value
            object.__setattr__(value, "_scope_name", name)
            for sub_name, param in [*value.named_parameters(), *value.named_buffers()]:
                param.value.name = f"{name}.{sub_name}"
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array) -> None:
        """A named non-trained state array (BatchNorm's running statistics), part of ``state_dict``."""
        self._buffers[name] = Parameter(array, requires_grad=False)
        self._buffers[name].value.name = name
        object.__setattr__(self, name, self._buffers[name])

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (``False``) or unfreeze every parameter of this module and its children, as in PyTorch.

        >>> from graphc import nn
        >>> layer = nn.Linear(2, 2).requires_grad_(False)
        >>> [p.requires_grad for p in layer.parameters()]
        [False, False]
        """
        for param in self.parameters():
            param.requires_grad = requires_grad
        return self

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        hooks = self.__dict__.get("_forward_hooks", {})
        for hook in [h for kind, h in hooks.values() if kind == "pre"]:
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        _tensor._scope_stack.append(self._scope_name or type(self).__name__)
        try:
            output = self.forward(*args, **kwargs)
        finally:
            _tensor._scope_stack.pop()
        for hook in [h for kind, h in hooks.values() if kind == "post"]:
            result = hook(self, args, output)
            if result is not None:
                output = result
        return output

    def register_forward_pre_hook(self, hook) -> "RemovableHandle":
        """``hook(module, args)`` runs before ``forward``; a non-None result replaces ``args`` (as in PyTorch)."""
        return self._add_hook("pre", hook)

    def register_forward_hook(self, hook) -> "RemovableHandle":
        """``hook(module, args, output)`` runs after ``forward`` (at build time, on symbolic tensors);
        a non-None result replaces the output, as in PyTorch. ``handle.remove()`` unregisters it."""
        return self._add_hook("post", hook)

    def _add_hook(self, kind: str, hook) -> "RemovableHandle":
        if not callable(hook):
            raise TypeError(f"a forward hook must be callable, got {type(hook).__name__}")
        if "_forward_hooks" not in self.__dict__:  # kept out of __init__ so subclasses need nothing new
            object.__setattr__(self, "_forward_hooks", OrderedDict())
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = (kind, hook)
        return handle

    # ---- traversal ----------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        for _, module in self.named_modules():
            yield module

    def children(self) -> Iterator["Module"]:
        yield from self._modules.values()

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs; a shared Parameter is listed once, as in PyTorch."""
        seen: set[int] = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, param in module._parameters.items():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield (f"{module_prefix}.{name}" if module_prefix else name), param

    def parameters(self, recurse: bool = True) -> list[Parameter]:
        return [p for _, p in self.named_parameters(recurse=recurse)]

    def named_buffers(self) -> Iterator[tuple[str, Parameter]]:
        for module_prefix, module in self.named_modules():
            for name, buf in module._buffers.items():
                yield (f"{module_prefix}.{name}" if module_prefix else name), buf

    # ---- modes --------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Training mode (dropout active, batch statistics); applies to ops built afterwards."""
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # ---- state --------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer value, keyed like PyTorch's ``state_dict``."""
        state: OrderedDict[str, np.ndarray] = OrderedDict()
        for name, param in self.named_parameters():
            state[name] = np.array(param.data, copy=True)
        for name, buf in self.named_buffers():
            state[name] = np.array(buf.data, copy=True)
        return state

    def load_state_dict(self, state_dict: Mapping, strict: bool = True):
        """Load values by name; every name, shape and dtype is checked before anything changes."""
        own = dict(self.named_parameters())
        own.update(self.named_buffers())
        arrays = {k: _to_numpy(v) for k, v in state_dict.items()}
        missing = [k for k in own if k not in arrays]
        unexpected = [k for k in arrays if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, array in arrays.items():
            if name in own and array.shape != own[name].data.shape:
                raise ValueError(f"load_state_dict: {name!r} expected shape {own[name].data.shape}, "
                                 f"got {array.shape}")
            if name in own and array.dtype.kind != own[name].data.dtype.kind:
                raise ValueError(f"load_state_dict: {name!r} expected dtype {own[name].data.dtype}, "
                                 f"got {array.dtype}")
        for name, array in arrays.items():
            if name in own:
                own[name].data = array
        return missing, unexpected

    def __repr__(self) -> str:
        """As ``torch.nn.Module.__repr__``: a one-line extra_repr inline, else one indented line per entry."""
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self._modules.items()]
        if len(extra_lines) == 1 and not child_lines:
            return f"{type(self).__name__}({extra_lines[0]})"
        lines = extra_lines + child_lines
        body = "\n  " + "\n  ".join(lines) + "\n" if lines else ""
        return f"{type(self).__name__}({body})"

    def extra_repr(self) -> str:
        return ""
