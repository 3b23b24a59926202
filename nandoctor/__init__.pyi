# What type checkers and IDEs see: at run time these names load on first use (__init__.py).
from nandoctor.api import FeatureStats as FeatureStats
from nandoctor.api import Report as Report
from nandoctor.api import SweepReport as SweepReport
from nandoctor.api import diagnose as diagnose
from nandoctor.api import feature_stats as feature_stats
from nandoctor.api import lr_sweep as lr_sweep
from nandoctor.errors import UsageError as UsageError
from nandoctor.findings import Finding as Finding
from nandoctor.findings import Fix as Fix
from nandoctor.findings import Severity as Severity
from nandoctor.findings import Where as Where
from nandoctor.guard import Guard as Guard
from nandoctor.guard import GuardTripped as GuardTripped

__version__: str
__all__: list[str]
