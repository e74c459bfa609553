"""``engine``: how the simulation twin computes (device, threads, chunking, precision).

Apart from ``precision`` these keys never change what is computed, so a run may be resumed
with other values (engines/runner.py); ``precision`` is kept for the whole run.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(ge=1)]


class EngineSpec(BaseModel):
    """How the simulation twin computes: results depend only on the other keys (on the CPU bit
    for bit; on a GPU to float32 rounding), except ``precision``, which trades accuracy for
    memory traffic on purpose and is reported in the run summary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["cpu", "cuda", "auto"] = Field(
        default="cpu",
        description="torch device of the batched engines (the FedAvg family, decfedavg, serverfree; the others "
        "run on the CPU); auto: cuda when available",
    )
    threads: PositiveInt | None = Field(
        default=None,
        description="CPU intra-op threads; default: 1, or every core for large steps on an idle machine (docs/benchmarks.md, threads)",
    )
    chunk_size: PositiveInt | None = Field(
        default=None, description="devices trained at once; default 2048 on the CPU, 65536 on a GPU"
    )
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32",
        description="dtype of the devices' weights and batches in local training (the FedAvg family, decfedavg, "
        "serverfree; the simulation twin only): halves their memory traffic; products accumulate in float32, "
        "aggregation, evaluation and stored models stay float32",
    )
