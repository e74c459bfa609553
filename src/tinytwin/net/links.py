"""Link (radio/wire) catalog: how fast, how lossy and how chatty each link is.

The built-in links live in ``links.yaml`` next to this module, every figure cited in
``sources`` (see ``docs/devices.md``). Conventions, shared by all links so that one
formula fits all of them::

    packets       = ceil(payload_bytes / mtu_bytes)
    bytes_on_link = payload_bytes + packets * header_bytes
    seconds       = latency_s + bytes_on_link * 8 / up_bps     (down_bps for downloads)

``header_bytes`` counts every per-packet overhead expressed in byte-times at the link rate
(protocol headers, and where relevant preamble, inter-frame gaps, ACK turnarounds), and
``loss`` is the probability that one such packet is lost. ``shared_medium``,
``medium_efficiency`` and ``duty_cycle`` feed the shared-medium model
(:mod:`tinytwin.net.medium`).

Parsing, ``base:`` inheritance and error reporting are shared with the device catalog
(:mod:`tinytwin.fleet.catalog`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from tinytwin.fleet.catalog import CatalogEntry, apply_overrides, load_yaml_catalog

__all__ = ["LINKS_YAML", "LinkModel", "load_link_catalog", "override_link"]

LINKS_YAML = Path(__file__).with_name("links.yaml")


class LinkModel(CatalogEntry):
    """One link kind; every figure cited in ``sources``."""

    latency_s: float = Field(ge=0, description="one-way latency per message")
    jitter_s: float = Field(default=0.0, ge=0)
    up_bps: float = Field(gt=0, description="device -> server/peer rate at the link layer (bit/s)")
    down_bps: float = Field(gt=0, description="server/peer -> device rate (bit/s)")
    loss: float = Field(ge=0, lt=1, description="per-packet loss probability")
    mtu_bytes: int = Field(gt=0, description="max payload bytes per packet")
    header_bytes: int = Field(ge=0, description="per-packet header/overhead bytes on the air/wire")
    shared_medium: bool = Field(
        default=False,
        description="a radio: by default the devices of one group share one medium (AP, central, gateway)",
    )
    medium_efficiency: float = Field(
        default=1.0, gt=0, le=1, description="share of a shared medium's airtime that is useful when contended"
    )
    duty_cycle: float = Field(
        default=1.0, gt=0, le=1, description="longest share of time a device may transmit (EU868 LoRa: 0.01)"
    )


def load_link_catalog(extra_files: Sequence[Path] = ()) -> dict[str, LinkModel]:
    """The built-in links, then those of each extra YAML file (adding or overriding).

    Raises :class:`~tinytwin.errors.TinyTwinError` naming the file, link and field.
    """
    return load_yaml_catalog(LinkModel, LINKS_YAML, extra_files, kind="link")


def override_link(link: LinkModel, changes: Mapping[str, Any], where: str) -> LinkModel:
    """A validated copy of ``link`` with ``changes`` applied; errors name ``<where>.<field>``."""
    return apply_overrides(link, changes, where, kind="link")
