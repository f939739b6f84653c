"""mexp_lib: the library behind the mexp notebooks.

Modules, in the order an experiment uses them: `data` (datasets and splits),
`extractors` (registry of feature extractors g), `features` (cached extraction),
`poisoning` (dirty-label and clean-label attacks), `heads` (training one or many heads),
`mi` (membership inference: Mentr and LiRA), `heuristic` (the heuristic h), `experiment`
(one dataset with one extractor), `plots` (figure style), `runner` (papermill execution).
"""

__version__ = "0.1.0"
