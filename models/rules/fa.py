from .base import LearningRule, uniform_like_weight


class FeedbackAlignment(LearningRule):
    """Lillicrap et al. 2016: a fixed random B of W's shape replaces W in the
    backward pass (for LC layers the same shape, hence the same locality)."""

    name = "fa"
    title = "Feedback alignment"
    citation_keys = ("lillicrap2016",)

    def init_layer(self, layer, generator):
        layer.register_buffer("feedback_weight", uniform_like_weight(layer, generator))

    def backward_operand(self, layer, weight):
        return layer.feedback_weight, None

    def alignment_matrix(self, layer):
        return getattr(layer, "feedback_weight", None)
