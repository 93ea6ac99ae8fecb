"""How much memory an audit may use on its device, and the batch sizes that follow from it.

One forward pass of one image is measured (every value the graph computes, with the autograd graph kept),
and the budget is shared: a forward/backward pass holds those values, about as many gradients and
temporaries; the trained model's recorded forward passes (``forward_record``) take the largest share, since
every stage starts from them; a small share keeps gradients asked for twice in a stage.
"""

import os
import resource
from dataclasses import dataclass

import torch
from torch import Tensor

from workers.core.audit_settings import AuditSettings
from workers.engine.forward_record import recorded_forward
from workers.engine.onnx_import import OnnxGraphModule

MIB = 2**20
DEFAULT_BATCH_SIZE = 256  # probe images per method call, when the budget allows: fewer, fuller passes
CPU_SHARE, CPU_CAP = 0.25, 8192 * MIB  # default budget: a quarter of the machine's memory, at most 8 GiB
GPU_SHARE = 0.5  # default budget: half of the GPU's memory
# and on a CPU, under an address-space limit (the service's audit processes), at most half the address space
# left: the rest holds the temporaries, the allocator's slack and the report's figures
ADDRESS_SPACE_SHARE = 0.5
PASS_SHARE = 0.3
RECORD_SHARE = 0.5
MEMO_SHARE = 0.05
PASS_FACTOR = 3  # a pass holds the forward values, as many gradients, and temporaries
# On a CPU, passes whose forward values outgrow the caches run slower per image: on the shared LeNet
# (2-core Xeon, 4 MiB L2) passes of up to 372 images (16 MiB of forward values) ran 40% faster per image
# than passes of 496 or more, and the matched audit 15% faster than with 24 MiB
CPU_PASS_BYTES = 16 * MIB
# but a pass of a few large images (one ResNet-18 image at 112 x 112 alone holds 5.7 MiB) outgrows the caches
# anyway and leaves the convolutions too little work per call: at least this many images per pass, where the
# budget allows
CPU_PASS_FLOOR_IMAGES = 32


@dataclass(frozen=True)
class MemoryPlan:
    budget_bytes: int
    image_bytes: int  # the forward values of one image, with their graph
    batch_size: int
    internal_batch_size: int
    record_bytes: int
    memo_bytes: int

    def applied(self, settings: AuditSettings) -> AuditSettings:
        """The settings with the batch sizes the audit really uses, as the report records them."""
        return settings.model_copy(
            update={"batch_size": self.batch_size, "internal_batch_size": self.internal_batch_size}
        )


def plan_memory(
    model: OnnxGraphModule, example: Tensor, settings: AuditSettings, device: torch.device
) -> MemoryPlan:
    """Batch sizes within the budget (and, on a CPU, within the caches): explicit settings are upper
    limits, never exceeded by the plan."""
    budget = settings.memory_budget_mib * MIB if settings.memory_budget_mib else default_budget(device)
    image_bytes = forward_bytes(model, example[:1])
    pass_images = max(1, int(budget * PASS_SHARE) // (PASS_FACTOR * image_bytes))
    if device.type == "cpu":
        pass_images = min(pass_images, max(CPU_PASS_FLOOR_IMAGES, CPU_PASS_BYTES // image_bytes))
    batch = min(settings.batch_size or DEFAULT_BATCH_SIZE, pass_images)
    internal = max(batch, min(settings.internal_batch_size or pass_images, pass_images))
    return MemoryPlan(
        budget_bytes=budget,
        image_bytes=image_bytes,
        batch_size=batch,
        internal_batch_size=internal,
        record_bytes=int(budget * RECORD_SHARE),
        memo_bytes=int(budget * MEMO_SHARE),
    )


def default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * GPU_SHARE)
    page = os.sysconf("SC_PAGE_SIZE")
    budget = min(int(page * os.sysconf("SC_PHYS_PAGES") * CPU_SHARE), CPU_CAP)
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return budget
    with open("/proc/self/statm") as statm:  # Linux, where the service sets the limit
        mapped = int(statm.read().split()[0]) * page
    return max(0, min(budget, int((limit - mapped) * ADDRESS_SPACE_SHARE)))


def forward_bytes(model: OnnxGraphModule, example: Tensor) -> int:
    """Bytes of every value one forward pass on ``example`` computes (constants excluded)."""
    return max(1, recorded_forward(model, example)[2])
