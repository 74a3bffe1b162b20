"""Images to sharded TFRecords with a manifest, and back into tf.data pipelines.

Modules that need TensorFlow (`reader`, `preprocess`, reading in `embeddings`)
import it themselves; ingestion and the demo data generator run without it.
"""

import os

# Before any TensorFlow import: keep its C++ start-up chatter out of users' logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
