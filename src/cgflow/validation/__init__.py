"""Checking a learned PMF without a reference: MD of the all-atom (fine-grained) system with the
PMF as a bias on the CG coordinates (``flatness``: the estimator; ``biased_md``: the driver)."""
