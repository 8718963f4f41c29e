"""A real SLURM test cluster for the test suite (issue 7).

- ``slurm_local.sh``: one node on 127.0.0.1, with accounting (sacct works).
- ``slurm_netns.sh``: two nodes (node1, node2) in network namespaces.
- ``fixtures.py``: the session-scoped pytest fixtures ``slurm_cluster`` and
  ``slurm_multinode`` that start them once per session and tear them down.
"""
