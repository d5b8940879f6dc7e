"""The faces of the workbench, one layer above the core and the analyses: the registry of analyses
(:mod:`~workbench.ui.registry`), the command line generated from their configs (:mod:`~workbench.ui.cli`), the core
verbs (:mod:`~workbench.ui.verbs`), ``workbench demo`` (:mod:`~workbench.ui.demo`), the dashboard's launch form and
progress (:mod:`~workbench.ui.launch`) and the browser driver the dashboard's tests use (:mod:`~workbench.ui.browser`).

Only this package (and ``app/``) imports both the core and the analyses; the core imports neither.
"""
