"""imgtrain: image classification and aesthetics training as batch jobs on HPC clusters.

Data flow: shards/ (pack) -> imgtrain.data -> imgtrain.models -> imgtrain.engine -> imgtrain.logs
-> imgtrain.analysis. Configuration: imgtrain.config.
"""
__version__ = "0.1.0"
