"""Helpers shared by the tests: tiny pipelines, toy training, zoo copies, reference recounts.

One home, imported one way: ``from tests.helpers.<module> import <name>`` (``make test`` runs
``python -m pytest`` from the repository root, which puts the root on ``sys.path``). Test modules
import helpers only from here, never from each other.
"""
