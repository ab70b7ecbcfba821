"""dhnn: Deep Hierarchical Neural Networks (Koo, Klabjan & Utke, IEEE BigData 2020).

A CNN learns features; a conversion turns chosen feature maps into one input per tree level; an
RNN (or a sequence-to-sequence model) emits one label per level; a beam search constrained to the
tree returns the best paths.

The package reads one way, each layer importing only those above it:

    paths, io, params        project paths, atomic files, the typed parameter schema (params_fetch: its data.fetch)
    taxonomy                 the class tree and its files
    data                     data sources behind one registry (data.registry)
    decoding                 beam search constrained to the tree
    models                   backbones, conversions, CNN-RNN, CNN-S2S, flat; one registry (models.registry)
    evaluation               metrics and batched inference
    tasks                    what a label is (a path, or a set of nodes); one registry
    training                 the training loop and safe, resumable checkpoints
    report                   result tables, figures and the evidence behind comparisons
    serving                  model bundles and `dhnn predict`
    pipeline                 what the DVC stages and notebooks call

Importing ``dhnn`` itself is cheap: import the module you need.
"""

__version__ = "0.2.0"
