"""Training and evaluation transforms: rotation/shear (the studies' augmentations) and whole-image evaluation
of images at or below the input size (issue 18)."""
import pytest

from imgtrain import config as C



def test_rotation_and_shear_augment_training_images_reproducibly():
    """data.rotate / data.shear (S000's RandomRotation, S003's rotations, S004's rotations and shear): a
    random affine of the whole image before the crop, the same for the same seed, none at evaluation."""
    import random

    import numpy as np
    import torch
    from PIL import Image

    from imgtrain.data.transforms import build_transform
    cfg = C.load(None, ["data.path=x", "data.img_size=32", "data.rotate=30", "data.shear=10", "data.scale=[1,1]",
                        "data.ratio=[1,1]", "data.hflip=0"])
    assert not cfg.data.plain_crop()  # not the fast crop-only path
    train, evaluate = build_transform(cfg.data, True, (0, 0, 0), (1, 1, 1)), build_transform(cfg.data, False, (0,) * 3,
                                                                                           (1,) * 3)
    img = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        random.seed(seed)
        outs.append(train(img))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert (outs[0] == 0).any()  # a turned image leaves black corners
    assert (evaluate(img) == 200).all()
    bad = C.load(None, ["data.path=x", "data.rotate=-5"])
    with pytest.raises(ValueError, match="data.rotate"):
        build_transform(bad.data, True, (0,) * 3, (1,) * 3)


def test_images_at_the_input_size_are_evaluated_whole():
    """Issue 18: timm's default crop_pct (0.875) enlarged a 28 px image to 32 / 0.875 and cut its border off
    at evaluation while training saw it whole. Images at or below data.img_size are now evaluated whole;
    larger ones are resized and centre-cropped as before; an explicit data.crop_pct is kept."""
    import numpy as np
    from PIL import Image

    from imgtrain.data.transforms import build_transform

    def evaluate(img, *extra):
        cfg = C.load(None, ["data.path=x", "data.img_size=32", "data.interpolation=bilinear", *extra])
        return build_transform(cfg.data, False, (0,) * 3, (1,) * 3)(img)

    small = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8))
    whole = evaluate(small, "data.crop_pct=1.0")
    assert torch_equal(evaluate(small), whole) and not torch_equal(evaluate(small, "data.crop_pct=0.875"), whole)
    large = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert torch_equal(evaluate(large), evaluate(large, "data.crop_pct=0.875"))
    assert not torch_equal(evaluate(large), evaluate(large, "data.crop_pct=1.0"))


def torch_equal(a, b) -> bool:
    import torch
    return a.shape == b.shape and bool(torch.equal(a, b))
