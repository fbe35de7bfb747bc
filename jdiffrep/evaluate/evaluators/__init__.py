"""The evaluators that `config.evaluate.evals` can list, by `type`.

A new evaluator is a `base.Evaluator` subclass added here; an entry
`config.evaluate.evals.<name> = {'type': <its type>, 'enabled': True, **its options}` runs it.
"""

from jdiffrep.evaluate.evaluators import accuracy_vs_t
from jdiffrep.evaluate.evaluators import attribute_probe
from jdiffrep.evaluate.evaluators import attribute_regression
from jdiffrep.evaluate.evaluators import base
from jdiffrep.evaluate.evaluators import categorical_probe
from jdiffrep.evaluate.evaluators import counterfactual
from jdiffrep.evaluate.evaluators import reconstruction
from jdiffrep.evaluate.evaluators import timestep_probe

EVALUATORS: dict[str, type[base.Evaluator]] = {
    'attribute_probe': attribute_probe.AttributeProbe,
    'categorical_probe': categorical_probe.CategoricalProbe,
    'accuracy_vs_t': accuracy_vs_t.AccuracyVsT,
    'reconstruction': reconstruction.Reconstruction,
    'timestep_probe': timestep_probe.TimestepProbe,
    'counterfactual': counterfactual.Counterfactuals,
    'attribute_regression': attribute_regression.AttributeRegression,
}


def check_entry(name: str, entry) -> None:
  """Raises ValueError naming the entry of `config.evaluate.evals` and what is wrong with it."""
  kind = entry.get('type')
  if kind not in EVALUATORS:
    raise ValueError(f'config.evaluate.evals.{name}.type={kind!r} is not an evaluator; choose '
                     f'one of {sorted(EVALUATORS)}.')
  allowed = set(base.ENTRY_FIELDS) | set(EVALUATORS[kind].options)
  unknown = sorted(set(entry) - allowed)
  if unknown:
    raise ValueError(f'config.evaluate.evals.{name} has fields {unknown} that a {kind!r} '
                     f'evaluator does not read; it reads {sorted(allowed)}.')
  EVALUATORS[kind].check_options(name, entry)
