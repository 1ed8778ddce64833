"""The command line silences exactly the upstream output a user cannot act on, and nothing else."""
import logging
import warnings

from tokgen.cli import LIGHTNING_INFO_LOGGERS, silence_upstream_noise


def test_upstream_noise_is_filtered_by_exact_message(caplog):
    silence_upstream_noise()
    silence_upstream_noise()  # idempotent: one filter per logger
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
                      "treespec.is_leaf()` instead.", FutureWarning)
        warnings.warn("some other feature is deprecated", FutureWarning)
    assert [str(w.message) for w in seen] == ["some other feature is deprecated"]
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        assert len(logger.filters) == 1
        with caplog.at_level(logging.INFO, logger=name):
            logger.info("💡 Tip: For seamless cloud logging, try installing litlogger")
            logger.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"] * 2
