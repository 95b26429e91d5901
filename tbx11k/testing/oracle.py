"""Import to register the test-only ``GTOracleDetector`` (used via ``custom_imports``)."""
from ._utils import register_oracle_detector

register_oracle_detector()
