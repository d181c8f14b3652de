"""The parts of ``scripts/demo``: its clients, the system it starts, and the story's steps.

``scripts/demo`` puts the repository root and ``scripts/`` on ``sys.path`` before importing it.
"""
