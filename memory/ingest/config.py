"""Ingestion settings, and how they become Ray resource requests on a given cluster."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from memory.ingest.encoders import DEFAULT_MODEL

__all__ = ["IngestConfig", "Resources", "plan_resources"]


class IngestConfig(BaseModel):
    """Tunables of one ingestion run; every field has a default that suits a small machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # chunking (unstructured's chunk_by_title)
    max_characters: int = Field(1000, gt=0, description="Hard cap on a chunk's length.")
    new_after_n_chars: int = Field(800, gt=0, description="Soft cap: start a new chunk after this.")
    overlap: int = Field(100, ge=0, description="Characters repeated between pieces of a split element.")
    overlap_all: bool = Field(False, description="Also overlap chunks made of whole elements.")
    combine_text_under_n_chars: int = Field(
        200, ge=0, description="Merge a title section shorter than this into the next one."
    )
    pdf_strategy: Literal["pypdf", "fast"] = Field(
        "pypdf", description="pypdf text extraction, or unstructured's fast strategy (needs unstructured[pdf])."
    )

    # dedupe
    near_duplicate_threshold: float = Field(
        0.9, gt=0, le=1, description="Estimated Jaccard similarity (word 5-grams) that marks a near-duplicate."
    )
    near_duplicates: bool = True

    # embedding
    model: str = DEFAULT_MODEL
    embed_actors: int | None = Field(
        None, ge=1, description="Embedding actors; default one per CPU (per embed_threads CPUs), or fills the GPUs."
    )
    embed_threads: int = Field(1, ge=1, description="torch threads per embedding actor (CPU).")
    embed_num_cpus: float = Field(
        0, ge=0, description="Logical CPUs each (long-lived) embedding actor reserves; 0 lets the OS share cores."
    )
    num_gpus: float = Field(0, ge=0, description="GPUs per embedding actor; > 0 runs the model on CUDA.")
    embed_batch_size: int = Field(128, gt=0, description="Chunks sent to an embedding actor per call.")
    encode_batch_size: int | None = Field(
        None, gt=0, description="Chunks per forward pass; default 8 on CPU (little padding), 64 on GPU."
    )
    embed_queue_depth: int = Field(2, ge=1, description="Batches queued per embedding actor.")
    embed_idle_timeout_s: float = Field(300, gt=0, description="An embedding actor idle this long exits.")

    # parsing and writing
    files_per_task: int = Field(16, gt=0, description="Files one parse task handles (one Ray Data block).")
    parse_num_cpus: float = Field(1, gt=0, description="Logical CPUs per parse task.")
    upsert_batch_size: int = Field(256, gt=0)
    fingerprint_threads: int = Field(8, gt=0, description="Threads that read and hash files before parsing.")

    @model_validator(mode="after")
    def _consistent(self) -> IngestConfig:
        if self.new_after_n_chars > self.max_characters:
            raise ValueError(
                f"new_after_n_chars ({self.new_after_n_chars}) must be less than or equal to "
                f"max_characters ({self.max_characters})"
            )
        if self.overlap >= self.max_characters:
            raise ValueError(f"overlap ({self.overlap}) must be less than max_characters ({self.max_characters})")
        return self


@dataclass(frozen=True)
class Resources:
    embed_actors: int
    embed_num_cpus: float
    embed_threads: int
    num_gpus: float
    parse_num_cpus: float
    device: str
    encode_batch_size: int


def plan_resources(config: IngestConfig, cluster_cpus: float, cluster_gpus: float = 0) -> Resources:
    """Resource requests that can neither deadlock nor leave cores idle.

    Ray schedules by *logical* CPUs. Embedding actors that reserve every CPU leave none for the
    parse tasks that feed them, and the run hangs without an error. The actors are long-lived
    (see embedders.py), so by default they reserve none: one single-threaded actor per CPU
    shares the cores with parsing (a few percent of the work) through the OS scheduler, and
    spreads over the nodes of a cluster. A reservation (`embed_num_cpus`) is checked to leave
    at least one parse task's worth, or an eighth of a large cluster.
    """
    parse = min(config.parse_num_cpus, cluster_cpus / 2)
    spare = cluster_cpus - max(parse, cluster_cpus / 8)
    if spare <= 0:
        raise ValueError(f"the cluster has {cluster_cpus} CPUs; ingestion needs more than parse_num_cpus ({parse})")
    if config.num_gpus > 0:
        if cluster_gpus < config.num_gpus:
            raise ValueError(
                f"num_gpus ({config.num_gpus}) per embedding actor, but the cluster has {cluster_gpus} GPUs; "
                "set num_gpus=0 to embed on CPUs"
            )
        actors = config.embed_actors or max(1, int(cluster_gpus // config.num_gpus))
        device, batch = "cuda", config.encode_batch_size or 64
    else:
        actors = config.embed_actors or max(1, int(cluster_cpus // config.embed_threads))
        # On a CPU, sequences are sorted by length within a call and small forward passes
        # waste little on padding: 8 runs ~10% faster per chunk than the default 32.
        device, batch = "cpu", config.encode_batch_size or 8
    cpus = config.embed_num_cpus
    if actors * cpus > spare + 1e-9:
        raise ValueError(
            f"embed_actors ({actors}) x embed_num_cpus ({cpus}) = {actors * cpus} logical CPUs would starve the "
            f"parse tasks: the cluster has {cluster_cpus} and keeps {cluster_cpus - spare} for parsing; "
            "lower embed_num_cpus or embed_actors"
        )
    return Resources(actors, cpus, config.embed_threads, config.num_gpus, parse, device, batch)
