"""What an evaluator is, and what it is given: the trained stages and the dataset (`Context`).

The evaluate stage runs the entries of `config.evaluate.evals` (big_vision's style: each entry
names its evaluator `type` and its options; they run by name, those that read other evaluators'
results last). An evaluator declares what it `needs`; when
something is missing (a dataset without attributes, no stage whose z has time-step subsets) it is
skipped with the reason, never an error. It returns a dict of results that is merged, key by key,
into `results.json`. No evaluator asks which method a stage runs: it reads the stage's declared
`methods.representation.Representation`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import jax
import ml_collections

from jdiffrep.data import pipeline
from jdiffrep.data import registry
from jdiffrep.evaluate import feature_store
from jdiffrep.evaluate import features
from jdiffrep.methods import representation as representation_lib

# What an evaluator can need:
#   'attributes': the dataset's examples carry binary attributes (CelebA's 40);
#   'labels': they carry categorical labels;
#   'sweep': a stage offers an embedding along t (sdae, the DM's features);
#   'subsets': the entry's `stage` has a z split in time-step subsets (DiTi);
#   'reconstructs': a stage decodes its z by DDIM.
NEEDS = ('attributes', 'labels', 'sweep', 'subsets', 'reconstructs')
ENTRY_FIELDS = ('type', 'enabled')  # every entry's fields; an evaluator's `options` add to them


@dataclasses.dataclass(frozen=True)
class Stage:
  """A trained stage of the pipeline, loaded for evaluation."""
  name: str
  method: Any
  params: Any  # EMA parameters
  frozen: Any  # what the method keeps frozen (DiTi: its DM)
  representation: representation_lib.Representation
  step: int  # the checkpoint's training step


def split_names(spec: registry.DatasetSpec) -> dict[str, str]:
  """{'train', 'validation', 'test'} -> the dataset's split (validation: 10% of train if none;
  `pipeline.split_records` draws it at random where records keep a folder's sorted order)."""
  if spec.validation_split:
    return {'train': spec.train_split, 'validation': spec.validation_split,
            'test': spec.eval_split}
  return {'train': f'{spec.train_split}[:90%]', 'validation': f'{spec.train_split}[90%:]',
          'test': spec.eval_split}


class Context:
  """The trained stages, the dataset and its features, and the results so far.

  Features of every stage's representation (and raw pixels) are extracted on first use, once for
  all evaluators, into a `FeatureStore` under `scratch_dir` (in memory up to
  `config.evaluate.feature_memory_mb`); `close` deletes what was spilled.
  """

  def __init__(self, config: ml_collections.ConfigDict, out_dir, scratch_dir: str,
               stages: dict[str, Stage]):
    self.config = config
    self.eval_config = config.evaluate
    self.spec = registry.get_spec(config.dataset.name)
    self.out_dir = out_dir
    self.scratch_dir = scratch_dir
    self.stages = stages
    self.splits = split_names(self.spec)
    self.chunk_bytes = self.eval_config.probe_chunk_mb * 2 ** 20
    self.results: dict[str, Any] = {}  # merged results of the evaluators run so far
    self.extraction_info: dict[str, Any] = {}  # what `feature_sets` extracted
    self._dataset_targets = None
    self._feature_sets = None
    self._store = None

  # ------------------------------------------------------------------ the dataset
  @property
  def attribute_names(self):
    return self.spec.attribute_names

  @property
  def dataset_targets(self) -> frozenset[str]:
    """{'attributes', 'labels'}: what every split's examples carry (read from its first one)."""
    if self._dataset_targets is None:
      found = []
      for split in self.splits.values():
        first = next(pipeline.iterate_split(self.config.dataset, split, 1, limit=1))
        found.append({name for name, present in (('attributes', 'attributes' in first),
                                                  ('labels', bool(first.get('labels'))))
                      if present})
      self._dataset_targets = frozenset(set.intersection(*found))
    return self._dataset_targets

  # ------------------------------------------------------------------ the stages
  @property
  def sweep_families(self) -> dict[str, str]:
    """{family: legend label} of the stages whose features are an embedding along t."""
    return {s.representation.sweep_family: s.representation.sweep_label
            for s in self.stages.values() if s.representation.sweep_family}

  def subset_stage(self, name: str) -> Stage | None:
    """Stage `name` if it is loaded and its z has time-step subsets, else None."""
    stage = self.stages.get(name)
    return stage if stage is not None and stage.representation.partition is not None else None

  # ------------------------------------------------------------------ features
  def feature_function(self):
    """images [B, H, W, C] -> {name: [B, D]}: raw pixels and every stage's declared features.

    The parameters enter the jitted function as arguments, never as closed-over constants:
    XLA:CPU constant-folds captured parameters, and with the CelebA encoder's at batch >= 128
    that returned NaN for every image (jax 0.10, seen 2026-12-02); as arguments the same batch
    is finite (and compiles faster).
    """
    declared = {name: stage.representation.features for name, stage in self.stages.items()}
    params = {name: stage.params for name, stage in self.stages.items()}

    @jax.jit
    def features_of(params, x):
      out = {'pixels': x.reshape(x.shape[0], -1)}
      for name, stage_features in declared.items():
        for key, value in stage_features(params[name], x).items():
          if key in out:
            raise ValueError(f'Stage {name!r} declares the feature set {key!r}, which another '
                             'stage (or raw pixels) already gives; rename one of the stages.')
          out[key] = value
      return out

    return lambda images: features_of(params, images)

  @property
  def feature_sets(self) -> dict:
    """{split key: {'features': {name: [N, D]}, 'labels': {...}, 'attributes': [N, A]}}; with
    `config.evaluate.probe_train_flip`, also `features.MIRRORED_TRAIN`: the flipped train
    images' features."""
    if self._feature_sets is None:
      self._store = feature_store.FeatureStore(self.scratch_dir,
                                               self.eval_config.feature_memory_mb * 2 ** 20)
      limits = {'train': self.eval_config.train_limit, 'validation': self.eval_config.eval_limit,
                'test': self.eval_config.eval_limit}
      splits = dict(self.splits)
      if self.eval_config.probe_train_flip:  # the flipped train images, for the probes
        splits[features.MIRRORED_TRAIN] = splits['train']
        limits[features.MIRRORED_TRAIN] = limits['train']
      self._feature_sets = features.extract(
          self.feature_function(), self.config.dataset, splits, self._store,
          batch_size=self.eval_config.batch_size, limits=limits,
          mirrored=(features.MIRRORED_TRAIN,))
      self.extraction_info = {
          'num_examples': {key: feature_store.num_rows(next(iter(value['features'].values())))
                           for key, value in self._feature_sets.items() if key in self.splits},
          'features_streamed_from_disk': [f'{key}/{name}' for key, name in self._store.spilled]}
    return self._feature_sets

  def close(self) -> None:
    if self._store is not None:
      self._store.close()

  # ------------------------------------------------------------------ reuse
  def fingerprint(self, entry: ml_collections.ConfigDict, inputs: dict | None = None) -> str:
    """A hash of everything an entry's result depends on: the entry, the evaluation settings,
    the dataset, the seed, every stage's config and checkpoint step, and the evaluator's own
    `inputs` (`Evaluator.fingerprint_inputs`, e.g. the transfer dataset it reads).

    Other entries of `config.evaluate.evals` are left out, so adding an evaluator keeps the
    results of the others reusable.
    """
    def without(config, *fields):
      return {k: v for k, v in config.to_dict().items() if k not in fields}
    from jdiffrep import config as config_lib  # pylint: disable=g-import-not-at-top
    payload = {
        'entry': entry.to_dict(), 'evaluate': without(self.eval_config, 'evals'),
        'dataset': self.config.dataset.to_dict(), 'sample': self.config.sample.to_dict(),
        'seed': self.config.seed,
        'stages': {name: {'step': stage.step, 'config': without(
            config_lib.stage_config(self.config, name), 'evaluate', 'pipeline', 'stage_overrides')}
                   for name, stage in self.stages.items()}}
    if inputs:
      payload['inputs'] = inputs
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Evaluator:
  """One part of the evaluate stage. Subclasses set `needs` and `options` and define `run`.

  `options`: the entry fields this evaluator reads besides `type` and `enabled`, with their
  defaults; `check_options` refuses bad values before anything runs. `reads_results`: True for an
  evaluator that reads other evaluators' results (from `context.results`); it runs after all
  those that do not.
  """
  needs: tuple[str, ...] = ()
  options: dict[str, Any] = {}
  reads_results: bool = False

  @classmethod
  def check_options(cls, name: str, entry: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming `config.evaluate.evals.<name>.<option>` and its valid values."""
    del name, entry  # most evaluators' options need no check beyond their names

  def fingerprint_inputs(self, context: Context, entry: ml_collections.ConfigDict) -> dict:
    """What the result depends on besides the config and the stages (hashed into the
    fingerprint); {} for evaluators that read only the config's dataset."""
    del context, entry
    return {}

  def missing(self, context: Context, entry: ml_collections.ConfigDict) -> str | None:
    """Why this evaluator cannot run here, or None when everything it needs is there."""
    for need in self.needs:
      if need not in NEEDS:
        raise ValueError(f'{type(self).__name__} needs {need!r}, which is not one of {NEEDS}.')
      if need in ('attributes', 'labels') and need not in context.dataset_targets:
        return f'dataset {context.spec.name!r} has no {need}'
      if need == 'sweep' and not context.sweep_families:
        return 'no stage gives an embedding along t (sdae, or the DM with dm_feature_timesteps)'
      if need == 'reconstructs' and not any(s.representation.reconstructs
                                            for s in context.stages.values()):
        return 'no stage decodes its z (DiTi, PDAE)'
      if need == 'subsets' and context.subset_stage(entry.stage) is None:
        return (f'stage {entry.stage!r} is not in the pipeline or its z has no time-step '
                'subsets')
    return None

  def run(self, context: Context, entry: ml_collections.ConfigDict) -> dict:
    raise NotImplementedError
