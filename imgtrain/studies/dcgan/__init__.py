"""DCGAN (Radford, Metz & Chintala 2016) for MNIST/Fashion-MNIST-format grey images, run as a
resumable job that logs to the Parquet metrics schema (DESIGN §2-§4).

    from imgtrain.studies import dcgan
    images, labels = dcgan.load_mnist_dir("data/fashion-mnist")     # IDX files, .gz or plain
    G, D = dcgan.Generator(nz=100, img_size=28), dcgan.Discriminator(img_size=28)

Data: the raw IDX files of the MNIST format (`train-images-idx3-ubyte[.gz]`, optional
`train-labels-idx1-ubyte[.gz]`; `t10k-*` for --split test), parsed here with numpy, or any shard data
set (images decoded to grey). Images are resized (bilinear) to --img-size when their size differs,
scaled to [-1, 1], and held in memory (60,000 MNIST images at 28 px are 188 MB as float32).

Model (as in the paper and PyTorch's reference example, but for the discriminator's normalisation): the
generator maps z ~ N(0, I) through transposed convolutions with BatchNorm + ReLU to a tanh image; the
discriminator is strided convolutions with LeakyReLU(0.2), without BatchNorm by default; weights ~ N(0, 0.02),
BatchNorm scales ~ N(1, 0.02); Adam(lr 2e-4, betas (0.5, 0.999)) for both; binary cross-entropy with
the non-saturating generator loss. The discriminator outputs a logit and the loss is
BCEWithLogitsLoss, which is sigmoid + BCE computed stably. Spatial plan: 28 = 7 x 2^2, 32 = 4 x 2^3,
64 = 4 x 2^4 (any 4 x 2^k or 7 x 2^k works); channels halve per upsampling from ngf x 2^(k-1).
The discriminator sees a real batch and a fake batch separately, as in the reference. With BatchNorm in
it (--d-norm batch: the paper's choice, BatchNorm after each strided conv but the first), our CPU runs on
scikit-learn's digits (1,797 blurry 8x8 images enlarged to 28 px) collapsed the generator to one flat
image within ~200 steps (D wins: d_loss -> 0.07, sample diversity 0.004, seeds 0-3, ngf = ndf = 16 or 32),
while without it (--d-norm none, the default) the samples were diverse, digit-like and closer to the data
after ~300 steps in every seed (tests/test_bow_dcgan.py checks this for the default). Not checked on the
real MNIST/Fashion-MNIST files, which were not available offline.

Logged per optimizer step (split train, step = steps done, epoch 0-based): d_loss, g_loss, d_x (mean
D(x)), d_g_z1 (mean D(G(z)) before the D update), d_g_z2 (after it, in the G update). Per epoch:
epoch_d_loss, epoch_g_loss, epoch_d_x, epoch_d_g_z (means over the epoch), img_per_s, epoch_s.
Per epoch also samples/epoch-NNNN.png: G(fixed noise) in eval mode as a grid of ceil(sqrt(n)) columns,
and checkpoints/last.pt (G, D, both optimizers, fixed noise, RNG states, data position), written
atomically. samples/real.png shows real training images once.

Resume: the same command again continues from last.pt (the epoch order is a function of (seed, epoch)
and the noise RNG state is in the checkpoint, so on CPU an interrupted run ends with the same weights
as an uninterrupted one); a larger --epochs extends a DONE run. SIGUSR1/SIGTERM finish the current step,
write last.pt with the position inside the epoch and exit 75 (requeue me). A run killed between a
metrics flush and its checkpoint replays those steps under a higher attempt number; readers keep the
highest attempt (DESIGN §3), so nothing counts twice.

Modules (the names below are their public API):
    data.py       IDX files (read, write, find), MNIST-format folders, shard images, the [-1, 1] tensor
    models.py     the generator, the discriminator, their initialisation, the sample grid
    config.py     GanParams, the run's config.yaml and config hash
    training.py   one GAN step and the resumable training job
    cli.py        jobs/dcgan.py's command line
"""
from imgtrain.studies.dcgan.data import (IDX_TYPES, DataError, find_idx, idx_bytes, load_mnist_dir, load_shard_images,
                                         parse_idx, read_idx, to_tensor, write_idx)
from imgtrain.studies.dcgan.models import (D_NORMS, Discriminator, Generator, init_weights, sample_grid_png,
                                           spatial_plan)
from imgtrain.studies.dcgan.config import GanParams, config_hash, config_of
from imgtrain.studies.dcgan.training import gan_step, load_data, log, train
from imgtrain.studies.dcgan.cli import EPILOG, build_parser, main

__all__ = ["D_NORMS", "DataError", "Discriminator", "GanParams", "Generator", "find_idx", "gan_step", "idx_bytes",
           "init_weights", "load_mnist_dir", "load_shard_images", "main", "parse_idx", "read_idx", "sample_grid_png",
           "spatial_plan", "to_tensor", "train", "write_idx"]
