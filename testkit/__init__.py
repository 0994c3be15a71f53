"""Run NIST XDS Toolkit test directories against any XDS.b endpoint (``opendmp testkit run``).

A conformance tester points it at another system; our own test suite points it at
OpenDMP.  It does headless what the toolkit's test engine does: read
``index.idx``/``testplan.xml`` (:mod:`testkit.plan`), prepare each request the way the
toolkit does -- ``UseReport``, patient id assignment, ``UseId``, uniqueId and UUID
assignment, ``Report`` (:mod:`testkit.context`) and ebRIM 2.1 -> 3.0 conversion
(:mod:`testkit.ebrim21`) -- send it (:mod:`testkit.steps`), and judge the answer
against ``ExpectedStatus``, ``ExpectedErrorCode``, ``ExpectedErrorMessage``,
``ExpectedContents`` and ``Assertions`` (:mod:`testkit.expect`).  One line per step
and a summary are printed (:mod:`testkit.report`); :mod:`testkit.cli` holds the
command.

A step PASSes only when its status, error codes and messages match, the response has
the right wsa:Action and element and is schema-valid, and every expectation this
runner implements holds; expectations it cannot evaluate are named on the line
("N assertions not checked: ...") and counted in the summary.  Steps it cannot run
at all are SKIP with the reason (see :mod:`testkit.steps` for the list).
"""
