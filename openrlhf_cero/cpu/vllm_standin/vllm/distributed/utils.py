"""``StatelessProcessGroup``: a rendezvous outside ``torch.distributed``'s default group.

OpenRLHF uses it to join DeepSpeed rank 0 and every engine in a group of their own
(``world_size = engines + 1``), independent of each side's default group.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist


@dataclass
class StatelessProcessGroup:
    rank: int
    world_size: int
    store: dist.Store
    host: str
    port: int

    @staticmethod
    def create(
        host: str,
        port: int,
        rank: int,
        world_size: int,
        data_expiration_seconds: int = 3600,
        store_timeout: int = 300,
    ) -> "StatelessProcessGroup":
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a group of world_size {world_size}")
        # Rank 0 serves the store; the others retry connecting until it is up.
        store = dist.TCPStore(
            host_name=host,
            port=port,
            world_size=world_size,
            is_master=rank == 0,
            timeout=timedelta(seconds=store_timeout),
            wait_for_workers=False,
        )
        return StatelessProcessGroup(rank, world_size, store, host, port)
