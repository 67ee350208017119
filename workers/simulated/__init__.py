"""The SIMULATED backend: an OpenAI-compatible server whose answers are not from any model."""

from workers.simulated.config import SimConfig, sides_from_pairs
from workers.simulated.server import SimulatedServer
from workers.simulated.threaded import ThreadedServer

__all__ = ["SimConfig", "SimulatedServer", "ThreadedServer", "sides_from_pairs"]
