"""Custom Keras layers of the models, serialisable so that saved models load in safe mode."""

import keras
from keras import ops

# ImageNet's mean pixel in BGR order, as Caffe's VGG16 and ResNet50 were trained with.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="pvs")
class CaffePreprocessing(keras.layers.Layer):
    """[0, 255] RGB images -> Caffe's input: BGR channel order minus the ImageNet mean
    (`keras.applications.vgg16.preprocess_input` as a layer, so it is saved with the model).

    Example:
        x = CaffePreprocessing()(keras.Input((224, 224, 3)))
    """

    def call(self, images):
        return ops.flip(images, axis=-1) - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="pvs")
class GeneralizedMeanPooling(keras.layers.Layer):
    """Generalised mean (GeM) pooling (Radenovic et al. 2018): feature maps [batch, h, w, c]
    -> [batch, c], each channel (mean over positions of max(x, epsilon)^p)^(1/p), with p a
    trainable weight (a scalar shared by the channels, as in the paper).

    p = 1 is average pooling; p -> infinity approaches max pooling. The clamp keeps the
    power real (activations may be negative) and its gradient finite at 0.

    Computes in float32 unless given another dtype, under a mixed precision policy too: in
    16 bits, powers of small ratios underflow (float16's smallest normal is 6e-5), and
    bfloat16's 8-bit mantissa would round p's small updates away. The output is float32.

    Args:
        initial_p: p's starting value (the paper's 3).
        epsilon: the clamp's floor.

    Example:
        pooled = GeneralizedMeanPooling()(keras.Input((7, 7, 1280)))  # [batch, 1280]
    """

    def __init__(self, initial_p: float = 3.0, epsilon: float = 1e-6, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.initial_p, self.epsilon = float(initial_p), float(epsilon)

    def build(self, input_shape):
        self.p = self.add_weight(
            name="p", shape=(), initializer=keras.initializers.Constant(self.initial_p), trainable=True
        )

    def call(self, features):
        clamped = ops.maximum(ops.cast(features, self.compute_dtype), self.epsilon)
        # Computed as m * (mean (x / m)^p)^(1/p), m each channel's largest value, which is the
        # same function for any m > 0 (so m needs no gradient): x^p itself overflows float32
        # once x^p > 3.4e38 (x = 4 at p = 64, x = 30 at p = 26); (x / m)^p never exceeds 1.
        largest = ops.stop_gradient(ops.max(clamped, axis=(1, 2), keepdims=True))
        means = ops.mean(ops.power(clamped / largest, self.p), axis=(1, 2))
        return ops.squeeze(largest, axis=(1, 2)) * ops.power(means, 1.0 / self.p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "initial_p": self.initial_p, "epsilon": self.epsilon}
