"""The SIMULATED backend: an OpenAI-compatible server whose answers are not from any model."""

from workers.simulated.server import SimConfig, SimulatedServer, ThreadedServer, sides_from_pairs

__all__ = ["SimConfig", "SimulatedServer", "ThreadedServer", "sides_from_pairs"]
