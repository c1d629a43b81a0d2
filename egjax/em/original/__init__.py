"""The one door to `compat="original"`: the released learner's arithmetic and quirks,
`original.rules.ORIGINAL` (an `egjax.em.rules.Rules`; `fit.RULES` picks it)."""
