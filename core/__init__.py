"""What every host package stands on: settings, the one error hierarchy, small shared types.

``core`` imports nothing of Somnus; ``images``, ``orchestrator``, ``api`` and ``cli``
import it (and, from the guest, only ``guest_agent.protocol``).
"""
