"""PMF estimators from flow draws: pooled importance-sampling values and mean forces."""
