"""A trained random forest flattened into numpy arrays: fast single-row prediction without
sklearn's per-call overhead and thread start-up, and a file format with no pickle in it.

Every tree's nodes live in the same arrays. A leaf points to itself on both sides, so walking
all trees one level at a time for `depth` steps lands every tree on its leaf:

    node = roots                          # one cursor per tree
    repeat depth times:
        node = left[node] if x[feature[node]] <= threshold[node] else right[node]
    value[node].mean(over trees)          # leaf values: what the router wants per class/backend
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FlatForest:
    roots: np.ndarray  # [num_trees] int32, index of each tree's root
    left: np.ndarray  # [num_nodes] int32; a leaf's own index
    right: np.ndarray  # [num_nodes] int32; a leaf's own index
    feature: np.ndarray  # [num_nodes] int32; 0 at leaves
    threshold: np.ndarray  # [num_nodes] float64 (sklearn's split points); +inf at leaves
    value: np.ndarray  # [num_nodes, num_outputs] float32; per-tree leaf value, 0 at inner nodes
    depth: int  # steps that bring every tree to a leaf
    num_features: int

    @classmethod
    def from_sklearn(cls, forest, output_map: np.ndarray, num_features: int) -> "FlatForest":
        """Flatten a fitted RandomForestClassifier. output_map [num_label_classes, num_outputs]
        turns a leaf's class probabilities into outputs (it is linear, so averaging leaves and
        then mapping equals mapping then averaging); forest.classes_ index its rows."""
        classes = np.asarray(forest.classes_, dtype=np.int64)
        roots, lefts, rights, feats, thrs, vals, offset = [], [], [], [], [], [], 0
        for est in forest.estimators_:
            t = est.tree_
            n = t.node_count
            leaf = t.children_left == -1
            idx = np.arange(n)
            lefts.append(np.where(leaf, idx, t.children_left) + offset)
            rights.append(np.where(leaf, idx, t.children_right) + offset)
            feats.append(np.where(leaf, 0, t.feature))
            thrs.append(np.where(leaf, np.inf, t.threshold))
            probs = t.value[:, 0, :] / t.value[:, 0, :].sum(axis=1, keepdims=True)
            vals.append(np.where(leaf[:, None], probs @ output_map[classes], 0.0))
            roots.append(offset)
            offset += n
        return cls.checked(
            roots=np.asarray(roots, dtype=np.int32), left=np.concatenate(lefts).astype(np.int32),
            right=np.concatenate(rights).astype(np.int32), feature=np.concatenate(feats).astype(np.int32),
            threshold=np.concatenate(thrs).astype(np.float64), value=np.concatenate(vals).astype(np.float32),
            num_features=num_features)

    @classmethod
    def checked(cls, roots, left, right, feature, threshold, value, num_features: int) -> "FlatForest":
        """Build from arrays of unknown origin (a router file): shapes, dtypes and indices are
        checked, and children must come after their parent (as sklearn lays trees out), so the
        walk always ends."""
        arrays = {"roots": roots, "left": left, "right": right, "feature": feature, "threshold": threshold}
        for name, a in arrays.items():
            if not isinstance(a, np.ndarray) or a.ndim != 1:
                raise ValueError(f"forest.{name} must be a 1-D array")
        n = len(left)
        if n == 0 or len(roots) == 0:
            raise ValueError("forest has no nodes or no trees")
        for name in ("right", "feature", "threshold"):
            if len(arrays[name]) != n:
                raise ValueError(f"forest.{name} has {len(arrays[name])} entries, forest.left {n}")
        if value.ndim != 2 or len(value) != n:
            raise ValueError(f"forest.value must be [{n}, num_outputs], got {value.shape}")
        for name in ("roots", "left", "right", "feature"):
            if arrays[name].dtype.kind not in "iu":
                raise ValueError(f"forest.{name} must hold integers, got {arrays[name].dtype}")
        if threshold.dtype.kind != "f" or value.dtype.kind != "f":
            raise ValueError("forest.threshold and forest.value must hold floats")
        idx = np.arange(n)
        if (roots < 0).any() or (roots >= n).any():
            raise ValueError("forest.roots point outside the nodes")
        for name, child in (("left", left), ("right", right)):
            if (child < 0).any() or (child >= n).any():
                raise ValueError(f"forest.{name} points outside the nodes")
            if ((child != idx) & (child <= idx)).any():
                raise ValueError(f"forest.{name} points back to an earlier node")
        if (feature < 0).any() or (feature >= num_features).any():
            raise ValueError(f"forest.feature must be in [0, {num_features})")
        if not np.isfinite(value).all():
            raise ValueError("forest.value must be finite")
        forest = cls(roots.astype(np.int32), left.astype(np.int32), right.astype(np.int32),
                     feature.astype(np.int32), threshold.astype(np.float64), value.astype(np.float32),
                     0, int(num_features))
        object.__setattr__(forest, "depth", forest._walk_depth())
        return forest

    def _walk_depth(self) -> int:
        """The longest root-to-leaf path; ends because children come after their parent."""
        frontier, depth = np.unique(self.roots), 0
        while True:
            inner = frontier[self.left[frontier] != frontier]
            if len(inner) == 0:
                return depth
            frontier = np.unique(np.concatenate([self.left[inner], self.right[inner]]))
            depth += 1

    @property
    def num_trees(self) -> int:
        return len(self.roots)

    @property
    def num_nodes(self) -> int:
        return len(self.left)

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        """[num_outputs] for one feature vector (float32, as sklearn compares)."""
        x = np.asarray(x, dtype=np.float32).astype(np.float64)
        node = self.roots
        for _ in range(self.depth):
            node = np.where(x[self.feature[node]] <= self.threshold[node], self.left[node], self.right[node])
        return self.value[node].astype(np.float64).mean(axis=0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """[num_rows, num_outputs]."""
        X = np.asarray(X, dtype=np.float32).astype(np.float64)
        if X.ndim != 2 or X.shape[1] != self.num_features:
            raise ValueError(f"features must be [num_rows, {self.num_features}], got {X.shape}")
        rows = np.arange(len(X))[:, None]
        node = np.broadcast_to(self.roots, (len(X), self.num_trees))
        for _ in range(self.depth):
            node = np.where(X[rows, self.feature[node]] <= self.threshold[node], self.left[node], self.right[node])
        return self.value[node].astype(np.float64).mean(axis=1)
