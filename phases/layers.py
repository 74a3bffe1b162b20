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
