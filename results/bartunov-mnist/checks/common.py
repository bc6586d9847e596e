"""What the checks here share: the MNIST test images as the suite's nets read them."""
from benchmark.robustness.loading import dataset_of


def mnist_test(count):
    """``(dataset, images, labels)``: the first ``count`` test images, normalised as in training."""
    data = dataset_of("mnist", "../shared/data")
    images = (data.test.images[:count].float() / 255 - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1)
    return data, images, data.test.labels[:count]
