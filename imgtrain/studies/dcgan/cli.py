"""jobs/dcgan.py's command line: the parser, its examples, and main."""
from __future__ import annotations

from imgtrain.studies._cli import job_parser, run_job
from imgtrain.studies.dcgan.config import GanParams
from imgtrain.studies.dcgan.data import DataError
from imgtrain.studies.dcgan.models import D_NORMS
from imgtrain.studies.dcgan.training import train

EPILOG = """\
examples:
  python jobs/dcgan.py --mnist-dir data/fashion-mnist --epochs 25 --out runs_root
  python jobs/dcgan.py --mnist-dir data/mnist --img-size 64 --batch-size 128 --run dcgan-mnist64
  python jobs/dcgan.py --data demo/shards/digits --img-size 32 --epochs 20 --ngf 32 --ndf 32
  python jobs/dcgan.py --mnist-dir data/mnist --d-norm batch      # the paper's discriminator (BatchNorm)

--mnist-dir holds train-images-idx3-ubyte[.gz] (and optionally train-labels-idx1-ubyte[.gz]; --split test
reads t10k-*), as distributed for MNIST and Fashion-MNIST. --data takes any shard data set (grey).
Run directory ROOT/runs/<run>/ (default <run>: dcgan-<data set>-<config hash>): config.yaml, run.json,
metrics/*.parquet (per step: d_loss, g_loss, d_x, d_g_z1, d_g_z2; per epoch: epoch_d_loss, epoch_g_loss,
epoch_d_x, epoch_d_g_z, img_per_s, epoch_s), samples/epoch-NNNN.png (fixed noise), samples/real.png,
checkpoints/last.pt, summary.parquet, DONE. The same command again resumes from last.pt; a larger
--epochs extends a finished run.
Exit status: 0 done, 1 failed, 2 bad arguments or data, 75 stopped by SIGUSR1/SIGTERM after writing
last.pt (requeue me).
"""


def build_parser():
    p = job_parser(
        "jobs/dcgan.py",
        "Train a DCGAN (Radford et al.) on MNIST/Fashion-MNIST-format IDX files or a shard data set "
        "(grey); losses to Parquet, a sample grid per epoch, atomic checkpoints, automatic resume.", EPILOG)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="SHARDS_DIR", help="shard data set (holds manifest.json)")
    src.add_argument("--mnist-dir", metavar="DIR", help="folder of MNIST-format IDX files (.gz or plain)")
    p.add_argument("--split", default="train", help="split to train on (default train)")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="use the first N images")
    p.add_argument("--epochs", type=int, default=5, help="epochs (default 5)")
    p.add_argument("--batch-size", type=int, default=64, metavar="B", help="batch size (default 64)")
    p.add_argument("--nz", type=int, default=100, help="noise dimension (default 100)")
    p.add_argument("--ngf", type=int, default=64, help="generator width: channels before the last layer (default 64)")
    p.add_argument("--ndf", type=int, default=64, help="discriminator width: channels of its first layer (default 64)")
    p.add_argument("--d-norm", choices=D_NORMS, default="none",
                   help="discriminator normalisation: none (default) or batch (BatchNorm after each strided conv but "
                        "the first, as in the paper; it collapsed the generator on digits, see imgtrain/studies/dcgan/)")
    p.add_argument("--d-extra-conv", type=int, default=0, metavar="N",
                   help="one more 3x3 convolution of N filters after the discriminator's first (S001's PyTorch "
                        "port: 32); default 0, none")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate, both nets (default 2e-4)")
    p.add_argument("--beta1", type=float, default=0.5, help="Adam beta1 (default 0.5; beta2 is 0.999)")
    p.add_argument("--img-size", type=int, default=28, metavar="PX",
                   help="image size: 28, 32, 64 (any 4 or 7 times a power of two; default 28)")
    p.add_argument("--n-samples", type=int, default=64, metavar="N", help="images in each sample grid (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, noise and data order (default 0)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--out", metavar="ROOT", default=None,
                   help="run root: the run lands in ROOT/runs/ (default $IMGTRAIN_ROOT or .)")
    p.add_argument("--run", metavar="NAME", default=None, help="run id (default dcgan-<data set>-<config hash>)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    params = GanParams(**{k: v for k, v in vars(args).items() if k not in ("out",)}, root=args.out)
    return run_job(train, params, DataError, "dcgan.py")
