"""Attribute inference from the encoder's features, and the task floor it is measured against.

Each attacker family is fitted on each training set of the learning curve (C chosen by cross-validation,
MLP/CNN epoch and GBM rounds chosen on a validation slice of that training set, never on holdout) and
scored once on holdout with scikit-learn's balanced accuracy and ROC AUC (one-vs-rest macro for more
than two classes), with a 95% binomial interval of the balanced accuracy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import numpy as np
import torch

from privsplit.errors import DataError
from privsplit.probes._fit import (
    CPU,
    Standardizer,
    balanced_class_weights,
    batches,
    epoch_bar,
    predict,
    seeded,
    validation_split,
)
from privsplit.probes.feature_results import AttackerScore, AttributeLeakage
from privsplit.probes.feature_spec import AttributeAttacker, FeatureProbeSpec

Z95 = 1.959963984540054


def balanced_accuracy_interval(y: np.ndarray, pred: np.ndarray, *, z: float = Z95) -> tuple[float, float]:
    """95% interval of the balanced accuracy: each class's recall is binomial over its holdout items.

    The variance is ``sum_k p_k (1 - p_k) / n_k / K^2`` with the Agresti-Coull estimate
    ``p_k = (hits + 2) / (n_k + 4)`` (so a recall of 0 or 1 still gets a width); clipped to [0, 1].
    """
    classes = np.unique(y)
    recalls, var = [], 0.0
    for k in classes:
        mask = y == k
        n, hits = int(mask.sum()), int((pred[mask] == k).sum())
        recalls.append(hits / n)
        p = (hits + 2) / (n + 4)
        var += p * (1 - p) / (n + 4)
    centre = float(np.mean(recalls))
    half = z * float(np.sqrt(var)) / len(classes)
    return max(0.0, centre - half), min(1.0, centre + half)


def attribute_auc(y: np.ndarray, proba: np.ndarray) -> float | None:
    """ROC AUC of scores ``proba`` (N, K): binary on column 1, else one-vs-rest macro over the classes in ``y``."""
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import label_binarize

    present = np.unique(y)
    if len(present) < 2:
        return None
    k = proba.shape[1]
    if k == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    onehot = label_binarize(y, classes=np.arange(k))
    return float(roc_auc_score(onehot[:, present], proba[:, present], average="macro"))


def best_balanced_accuracy_null(
    y: np.ndarray, predictions: Mapping[str, np.ndarray], *, permutations: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """The best of these attackers' balanced accuracies when the holdout's labels say nothing: the private labels
    of the same holdout records permuted at random (one draw shared by every attacker, so their correlation is
    kept), ``permutations`` times. Returns the mean and the 95th percentile of the best balanced accuracy: the
    best of several attackers on a finite holdout reads above chance by chance (the winner's curse), and this is
    its chance level. ``predictions``: each attacker's predicted labels on the same holdout records."""
    y = np.asarray(y).ravel()
    preds = np.stack([np.asarray(p).ravel() for p in predictions.values()]) if predictions else None
    if preds is None or preds.shape[1] != len(y) or len(y) < 2:
        raise DataError("the permutation null needs every attacker's predictions on the same holdout records")
    classes = np.unique(y)
    counts = np.array([(y == c).sum() for c in classes], dtype=np.float64)
    rng = np.random.default_rng([seed, 0x6E756C6C])
    best = np.empty(permutations)
    for start in range(0, permutations, 250):  # chunks bound the (chunk, attackers, records) arrays
        n = min(250, permutations - start)
        drawn = np.stack([rng.permutation(y) for _ in range(n)])  # (n, records)
        hits = drawn[:, None, :] == preds[None, :, :]  # (n, attackers, records)
        recall = sum(((hits & (drawn == c)[:, None, :]).sum(2) / k) for c, k in zip(classes, counts))
        best[start : start + n] = (recall / len(classes)).max(1)
    return float(best.mean()), float(np.quantile(best, 0.95))


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        return float(balanced_accuracy_score(y, pred))


def _full_proba(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """``predict_proba`` spread to all ``num_classes`` columns (classes unseen in training get 0)."""
    proba = np.zeros((len(x), num_classes))
    proba[:, model.classes_] = model.predict_proba(x)
    return proba


def task_floor(
    task_train: np.ndarray,
    private_train: np.ndarray,
    task_test: np.ndarray,
    private_test: np.ndarray,
    *,
    num_task_classes: int,
    num_classes: int,
) -> tuple[float, float | None, tuple[float, float]]:
    """(balanced accuracy, AUC, 95% interval) of inferring the private label from the true task label alone.

    A class-balanced logistic regression on the one-hot task label is fitted on the attacker part and
    scored on holdout: what any server that learns the task output can infer with no feature at all.
    """
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(private_train)) < 2:
        raise DataError("the attacker part holds one class of the private attribute only: use more data")
    eye = np.eye(num_task_classes)
    model = LogisticRegression(C=100.0, class_weight="balanced", max_iter=2000)
    model.fit(eye[task_train], private_train)
    proba = _full_proba(model, eye[task_test], num_classes)
    pred = proba.argmax(1)
    interval = balanced_accuracy_interval(private_test, pred)
    return _balanced_accuracy(private_test, pred), attribute_auc(private_test, proba), interval


def _logistic(x_train, y_train, x_test, *, num_classes: int, spec: FeatureProbeSpec):
    """Standardise + class-balanced logistic regression; C over ``spec.logistic_cs`` by stratified CV."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    flat_train, flat_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=3000))
    folds = min(spec.cv_folds, int(np.bincount(y_train)[np.unique(y_train)].min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if folds >= 2 and len(spec.logistic_cs) > 1:
            search = GridSearchCV(
                pipe,
                {"logisticregression__C": list(spec.logistic_cs)},
                cv=StratifiedKFold(folds, shuffle=True, random_state=spec.seed),
                scoring="balanced_accuracy",
                refit=True,
            )
            search.fit(flat_train, y_train)
            model, c, cv_score = (
                search.best_estimator_,
                search.best_params_["logisticregression__C"],
                search.best_score_,
            )
        else:
            c, cv_score = spec.logistic_cs[-1], None
            model = pipe.set_params(logisticregression__C=c).fit(flat_train, y_train)
    proba = _full_proba(model, flat_test, num_classes)
    return proba, cv_score, f"C={c:g} by {folds}-fold CV" if cv_score is not None else f"C={c:g}"


def _gbm(x_train, y_train, x_test, *, num_classes: int, spec: FeatureProbeSpec):
    """scikit-learn's HistGradientBoostingClassifier on the flat features, class-balanced; its number of
    boosting rounds chosen by early stopping on a validation slice of the training set."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    flat_train, flat_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    model = HistGradientBoostingClassifier(
        max_iter=spec.gbm_max_iter,
        learning_rate=0.1,
        l2_regularization=1.0,
        early_stopping=True,
        validation_fraction=spec.validation_fraction,
        n_iter_no_change=spec.patience,
        class_weight="balanced",
        random_state=spec.seed,
    )
    model.fit(flat_train, y_train)
    proba = _full_proba(model, flat_test, num_classes)
    return proba, None, f"{model.n_iter_} rounds by early stopping"


def _network(
    kind: AttributeAttacker,
    x_train,
    y_train,
    x_test,
    *,
    num_classes: int,
    spec: FeatureProbeSpec,
    progress: bool,
    device: torch.device = CPU,
):
    """Train an MLP/CNN attacker with Adam and class-balanced CE; keep the best validation epoch."""
    import torch
    from torch.nn import functional as F

    from privsplit.models import CNNAttacker, MLPAttacker

    per_channel = kind is AttributeAttacker.CNN
    tr, va = validation_split(len(x_train), spec.validation_fraction, seed=spec.seed, stratify=y_train)
    scaler = Standardizer.fit(x_train[tr], per_channel=per_channel)
    xs_tr, xs_va, xs_te = scaler(x_train[tr]), scaler(x_train[va]), scaler(x_test)
    ys_tr, ys_va = torch.from_numpy(y_train[tr]).to(device), y_train[va]
    weight = torch.from_numpy(balanced_class_weights(y_train[tr], num_classes))
    weight_on_device = weight.to(device)
    shape = tuple(x_train.shape[1:])
    rng = np.random.default_rng(spec.seed)
    seed = spec.seed + (1 if kind is AttributeAttacker.MLP else 2)
    with seeded(seed):
        net = (CNNAttacker if per_channel else MLPAttacker)(shape, num_classes).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        best = (-1.0, -np.inf)  # (validation balanced accuracy, -validation loss)
        best_state, best_epoch, stale = None, 0, 0
        bar = epoch_bar(spec.epochs, desc=f"attribute {kind.value}", progress=progress)
        for epoch in bar:
            net.train()
            for idx in batches(len(xs_tr), spec.batch_size, rng):
                x = torch.from_numpy(xs_tr[idx]).to(device)
                loss = F.cross_entropy(net(x), ys_tr[torch.from_numpy(idx).to(device)], weight=weight_on_device)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            logits = torch.from_numpy(predict(net, xs_va))
            val_loss = float(F.cross_entropy(logits, torch.from_numpy(ys_va), weight=weight))
            score = (_balanced_accuracy(ys_va, logits.argmax(1).numpy()), -val_loss)
            if score > best:
                best, best_epoch, stale = score, epoch + 1, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
            bar.set_postfix(val_bacc=f"{score[0]:.3f}", best=f"{best[0]:.3f}@{best_epoch}")
            if stale >= spec.patience:
                break
        net.load_state_dict(best_state)
    proba = torch.softmax(torch.from_numpy(predict(net, xs_te)), dim=1).numpy()
    return proba, best[0], f"epoch {best_epoch} of {epoch + 1} by validation"


def attack_attribute(
    train_sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
    floor_train: tuple[np.ndarray, np.ndarray],
    features_test: np.ndarray,
    private_test: np.ndarray,
    task_test: np.ndarray,
    *,
    name: str,
    classes: tuple[str, ...],
    num_task_classes: int,
    spec: FeatureProbeSpec,
    progress: bool = True,
    device: torch.device = CPU,
) -> AttributeLeakage:
    """Fit every attacker in ``spec.attackers`` on every training set; score each on the test part.

    ``train_sets`` maps a learning-curve set's name to its (features, private labels); ``floor_train``
    holds the (task labels, private labels) the task floor is fitted on (the attacker part). Scores are
    keyed ``"family@set"``; the headline (:attr:`AttributeLeakage.best`) is the best of them all.

    The MLP and CNN attackers train on ``device`` (logistic regression and gradient boosting are scikit-learn's,
    on the CPU).
    """
    if not spec.attackers:
        raise DataError("FeatureProbeSpec.attackers is empty: name at least one attribute attacker")
    if not train_sets:
        raise DataError("the feature probe got no training set for the attribute attackers")
    num_classes = len(classes)
    floor, floor_auc, floor_ci = task_floor(
        floor_train[0],
        floor_train[1],
        task_test,
        private_test,
        num_task_classes=num_task_classes,
        num_classes=num_classes,
    )
    fits: dict[AttributeAttacker, Callable] = {AttributeAttacker.LOGISTIC: _logistic, AttributeAttacker.GBM: _gbm}
    scores: dict[str, AttackerScore] = {}
    predictions: dict[str, np.ndarray] = {}
    for set_name, (features_train, private_train) in train_sets.items():
        for kind in spec.attackers:
            fit = fits.get(kind, _network)
            kwargs = {"num_classes": num_classes, "spec": spec}
            if fit is _network:
                kwargs.update(kind=kind, progress=progress, device=device)
            proba, val_score, selection = fit(
                x_train=features_train, y_train=private_train, x_test=features_test, **kwargs
            )
            pred = proba.argmax(1)
            predictions[f"{kind.value}@{set_name}"] = pred
            low, high = balanced_accuracy_interval(private_test, pred)
            scores[f"{kind.value}@{set_name}"] = AttackerScore(
                balanced_accuracy=_balanced_accuracy(private_test, pred),
                auc=attribute_auc(private_test, proba),
                validation_balanced_accuracy=None if val_score is None else float(val_score),
                selection=selection,
                attacker=kind.value,
                train_set=set_name,
                train_size=len(private_train),
                ci_low=low,
                ci_high=high,
            )
    null_mean, null_q95 = best_balanced_accuracy_null(private_test, predictions, seed=spec.seed)
    return AttributeLeakage(
        name=name,
        classes=tuple(classes),
        attackers=scores,
        chance=1.0 / num_classes,
        task_floor=floor,
        task_floor_auc=floor_auc,
        task_floor_ci=floor_ci,
        permutation_null_mean=null_mean,
        permutation_null_q95=null_q95,
    )
