"""`autoguidance`: guide a model with a bad version of itself — contrast with the prediction of a weaker denoiser
(smaller, or trained for less) on the same inputs and condition.

Karras et al., "Guiding a Diffusion Model with a Bad Version of Itself", NeurIPS 2024 (arXiv 2406.02507), Eq. 1:
D_w = D_0 + w·(D_1 − D_0), w = 1 no guidance (diffusers' convention), D_0 the weaker model. As the main reference
`{scale: w, reference: {name: autoguidance, model: ...}}`; as a term s = w − 1 (default 1.1: the paper's EDM2-S
setting w = 2.10 with an XS guiding model trained for 1/16 of the time). `model`: a local folder with the weaker
denoiser (safetensors; a pipeline folder works too), a bundled model's name (`digits-weak`), or, from Python, the
module. Its rows run in a call of its own network. Conventions: docs/CONVENTIONS.md §20, §21, §27.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from .base import PerturbedReference


class Autoguidance(PerturbedReference):
    """A weaker denoiser's prediction as the reference."""

    name = "autoguidance"
    paper = "Karras et al., NeurIPS 2024 (arXiv 2406.02507)"
    summary = "reference rows run through a weaker denoiser `model` (folder, bundled name, or module)"
    perturbation = "weaker_network"
    default_term_scale = 1.1

    model: Any

    @field_validator("model")
    @classmethod
    def _model(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip():
            return value
        if callable(value) and hasattr(value, "parameters"):  # a torch module
            return value
        raise ValueError("model is the weaker denoiser: a folder path or a bundled model's name (YAML), or the module "
                         "itself (Python)")

    def __deepcopy__(self, memo: dict[int, Any]) -> Autoguidance:
        """Sessions work on a deep copy of the spec; the weaker module is shared, never copied."""
        return self.model_copy()

    def to_spec(self) -> dict[str, Any]:
        model = self.model if isinstance(self.model, str) else f"<{type(self.model).__name__} module>"
        return {"name": self.name, "model": model}
