"""What defines a recommender model's shape, independent of torch modules."""

from __future__ import annotations

from dataclasses import dataclass

MODEL_NAMES = ("mf", "ncf", "fm", "deepfm")
# How the L2 term weighs a user's item rows (SecEmb Appendix I gives the weight, not the form):
#   "user":   reg x (||p_u||^2 + sum over the user's fetched rows ||q_j||^2 [+ feature embeddings])
#   "rating": the mean over the user's ratings of reg x (||p_u||^2 + ||q_j||^2 [+ features]), i.e. the
#             rows' part divided by the user's rating count, as per-sample losses usually carry it.
REG_FORMS = ("user", "rating")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dim: int
    n_user_features: int = 0
    n_item_features: int = 0
    init_std: float = 0.1
    reg_form: str = "user"
    reg_dense: bool = False  # the L2 term also covers every dense parameter (MLP weights, biases, norms)

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.name!r}; choose one of {', '.join(MODEL_NAMES)}")
        if not isinstance(self.dim, int) or self.dim <= 0:
            raise ValueError(f"model dim must be a positive integer, got {self.dim!r}")
        if self.name == "ncf" and self.dim % 2:
            raise ValueError(f"ncf needs an even dim (MLP 2d -> d -> d/2), got {self.dim}")
        if self.n_user_features < 0 or self.n_item_features < 0:
            raise ValueError("feature counts must be >= 0")
        if not self.init_std > 0:
            raise ValueError("init_std must be positive")
        if self.reg_form not in REG_FORMS:
            raise ValueError(f"unknown reg_form {self.reg_form!r}; choose one of {', '.join(REG_FORMS)}")
        if not isinstance(self.reg_dense, bool):
            raise ValueError(f"reg_dense must be a bool, got {self.reg_dense!r}")

    @property
    def row_dim(self) -> int:
        """Width of one item row: item embedding(s) plus the item bias / linear weight."""
        return 2 * self.dim + 1 if self.name == "ncf" else self.dim + 1

    @property
    def n_features(self) -> int:
        return self.n_user_features + self.n_item_features

    @property
    def dense_size(self) -> int:
        """Number of dense public parameters (SecEmb Table 9's '# Dense', plus MF's global bias)."""
        d = self.dim
        if self.name == "mf":
            return 1
        if self.name == "ncf":
            return (2 * d * d + d) + (d * (d // 2) + d // 2) + (d + d // 2)
        fm = self.n_features * (d + 1) + 1
        if self.name == "fm":
            return fm
        fields = self.n_features + 2
        h1, h2 = 4 * d, 2 * d
        mlp = (fields * d * h1 + h1) + 2 * h1 + (h1 * h2 + h2) + 2 * h2 + (h2 + 1)
        return fm + mlp

    @property
    def private_size(self) -> int:
        """User-private parameters: the user's embedding(s) and bias / linear weight."""
        return self.row_dim
