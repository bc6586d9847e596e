"""The corruptions, by name: a registry of corruption classes, as attacks are one.

Each class declares its levels at severities 1-5 and applies one level to
pixels in [0, 1] with torchvision's functional transforms. The built-ins
have CIFAR-10-C's parameters (Hendrycks & Dietterich 2019; 32 x 32 images,
so also MNIST's 28 x 28; ImageNet-C's blur would wipe a digit out).

Adding a corruption is one class and one line::

    @CORRUPTIONS.register("my-corruption")
    class MyCorruption(Corruption):
        levels = (...)  # severities 1-5

        def apply(self, pixels, level):
            ...  # pixels [N, C, H, W] in [0, 1] -> corrupted, in [0, 1]

This module imports no torch: ``cli.py`` lists the names.
"""
from models.registry import Registry


class Corruption:
    levels = ()  # the level of each severity, 1 first

    def apply(self, pixels, level):
        """``pixels`` [N, C, H, W] in [0, 1] corrupted at ``level``, still in [0, 1]."""
        raise NotImplementedError


CORRUPTIONS: Registry[type[Corruption]] = Registry("corruption")  # registration order: --corruptions' default


@CORRUPTIONS.register("gaussian_noise")
class GaussianNoise(Corruption):
    """Gaussian noise of std ``level``, clipped."""
    levels = (0.04, 0.06, 0.08, 0.09, 0.10)

    def apply(self, pixels, level):
        from torchvision.transforms.v2 import functional as TF
        return TF.gaussian_noise(pixels, mean=0.0, sigma=level, clip=True)


@CORRUPTIONS.register("gaussian_blur")
class GaussianBlur(Corruption):
    """Gaussian blur of sigma ``level``: kernel radius int(4 sigma + 0.5), as
    scipy's and scikit-image's truncate=4; reflect padding."""
    levels = (0.4, 0.6, 0.7, 0.8, 1.0)

    def apply(self, pixels, level):
        from torchvision.transforms.v2 import functional as TF
        radius = int(4 * level + 0.5)
        return TF.gaussian_blur(pixels, kernel_size=[2 * radius + 1] * 2, sigma=[level, level]).clamp(0, 1)


@CORRUPTIONS.register("contrast")
class Contrast(Corruption):
    """Contrast ``level``: a blend with each image's mean grey."""
    levels = (0.75, 0.5, 0.4, 0.3, 0.15)

    def apply(self, pixels, level):
        from torchvision.transforms.v2 import functional as TF
        return TF.adjust_contrast(pixels, level).clamp(0, 1)


def corrupt(pixels, name, level):
    """``pixels`` corrupted by the corruption ``name`` at ``level``."""
    return CORRUPTIONS.get(name)().apply(pixels, level)
