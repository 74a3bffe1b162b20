"""Catalog indexes: a shop's images embedded by a run's final model, searched as the run retrieves.

    pvs index build --run runs/demo shop/images --out indexes/shop [--kind hnsw]
    pvs index add indexes/shop shop/new-images
    pvs index update indexes/shop           # the sources again: changed shards re-embedded, removed images dropped
    pvs search --index indexes/shop photo.jpg

An index folder (layout.py) holds each source ingested, each image shard's embeddings
(one cached task per shard, as the training flow's extraction: a rerun or an added source
embeds only the shards it has not embedded), and the assembled index (assemble.py): the
run's final model and whitening copied in, the catalog's vectors prepared as the run's
retrieval prepares an index (whitening, DBA), an exact or a faiss index of them
(phases/retrieval/vector_index.py) with its recall@10 against the exact search measured
at build time, and `index.json`, written last, which names it all with sha256 digests.
Searching (index.py) checks every file before trusting it and refuses a query model
other than the index's own.
"""
