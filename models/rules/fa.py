from .base import FEEDBACK_INITS, LearningRule, uniform_like_weight

# Works this module's rules cite (BibTeX fields).
LILLICRAP2016 = {"type": "article",
                 "author": "Lillicrap, Timothy P. and Cownden, Daniel and Tweed, Douglas B. and Akerman, Colin J.",
                 "title": "Random synaptic feedback weights support error backpropagation for deep learning",
                 "journal": "Nature Communications", "volume": "7", "pages": "13276", "year": "2016",
                 "doi": "10.1038/ncomms13276"}


class FeedbackAlignment(LearningRule):
    """Lillicrap et al. 2016: a fixed random B of W's shape replaces W in the
    backward pass (for LC layers the same shape, hence the same locality)."""

    name = "fa"
    weight_transport = "no: a fixed random B of W's shape replaces W^T"
    colour = "#1f77b4"
    defaults = {"feedback_init": "xavier"}
    choices = {"feedback_init": FEEDBACK_INITS}
    title = "Feedback alignment"
    citations = {"lillicrap2016": LILLICRAP2016}

    def init_layer(self, layer, generator):
        layer.register_buffer("feedback_weight", uniform_like_weight(layer, generator, self.options["feedback_init"]))

    def backward_operand(self, layer, weight):
        return layer.feedback_weight, None

    def alignment_matrix(self, layer):
        return getattr(layer, "feedback_weight", None)
