"""The PyTorch backends: ``eager`` (the model as it is), ``prepared`` (:func:`seglab.inference.prepare`:
conv+BN folded, ``channels_last``) and ``compile`` (``torch.compile`` of the prepared copy, with
Inductor's *freezing*: weights become constants, so convolutions use pre-packed oneDNN weights).
``compile`` compiles once per input size (tens of seconds each): with symbolic sizes Inductor took
over 30 minutes on U²-Net on a shared 2-core machine, so tiles of one size suit it best. Batches
keep the size of the first one (a smaller batch is padded, a larger one split), so a sliding
window's last, partial batch does not compile a second graph.

``bf16`` runs the prepared copy with bfloat16 weights and inputs (``eager`` under ``torch.autocast``);
outputs are always float32. ``compile`` + ``int8`` is PyTorch's PT2E post-training quantisation with
the X86 Inductor quantiser (needs the ``torchao`` package): see :mod:`._pt2e`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from seglab.inference._common import model_device
from seglab.inference.backends._base import Runner, model_facts
from seglab.inference.prepare import prepare, prepare_info

__all__ = ["TorchRunner"]


class TorchRunner(Runner):
    """``eager``, ``prepared`` or ``compile`` in ``fp32`` or ``bf16`` (see the module docstring)."""

    def __init__(
        self, model: nn.Module, backend: str, precision: str, device: torch.device | None = None
    ) -> None:
        dev = device or model_device(model) or torch.device("cpu")
        super().__init__(model_facts(model), precision=precision, device=dev)
        self.backend = backend
        self._autocast = backend == "eager" and precision == "bf16"
        self._batch: int | None = None
        self._dtype = torch.bfloat16 if precision == "bf16" and not self._autocast else torch.float32
        if backend == "eager":
            net = model if not model.training and model_device(model) == dev else copy.deepcopy(model)
            self.module: nn.Module = net.eval().to(dev)
            self._channels_last = False
        else:
            net = prepare(model, device=dev)
            if self._dtype != torch.float32:
                net = copy.deepcopy(net).to(self._dtype) if net is model else net.to(self._dtype)
            info = prepare_info(net)
            self._channels_last = bool(info and info.channels_last)
            # one graph per input size: with symbolic sizes Inductor compiled U²-Net for over 30 minutes
            self.module = torch.compile(net, dynamic=False) if backend == "compile" else net

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        if self.backend == "compile":
            import torch._inductor.config as inductor_config

            # freezing: only while compiling and running this module (a global Inductor setting)
            with torch.no_grad(), inductor_config.patch(freezing=True):
                yield
        else:
            with torch.inference_mode():
                if self._autocast:
                    with torch.autocast(self.device.type, dtype=torch.bfloat16):
                        yield
                else:
                    yield

    def _forward(self, x: Tensor) -> Tensor:
        x = x.to(self.device, self._dtype)  # (N, C, h, w)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._context():
            out = self.module(x)  # (N, K, h', w')
        return out.float().contiguous()

    def _run(self, x: Tensor) -> Tensor:
        if self.backend != "compile":
            return self._forward(x)
        # Inductor compiles every new shape, batch size included: batches keep the first call's size
        # (the last, partial batch of a sliding window is padded with zeros, then cut off)
        b = self._batch = self._batch or int(x.shape[0])
        outs = []
        for i in range(0, int(x.shape[0]), b):
            part = x[i : i + b]  # (n, C, h, w), n <= b
            n = int(part.shape[0])
            if n < b:
                part = torch.cat([part, part.new_zeros((b - n, *part.shape[1:]))])  # (b, C, h, w)
            outs.append(self._forward(part)[:n])
        return torch.cat(outs)  # (N, K, h', w')
