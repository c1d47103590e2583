"""Analysis of PMFs: marginals of CG spaces with more than two dimensions."""
