"""Teachers: the client layer that critiques and rewrites the student's answers, behind one async seam.

Owns: the seam (`base`: `Request` -> `Completion`, the `Teacher` protocol, `Deferred`); settings
and where each value comes from (`settings`, `resolve`); the backend registry (`registry`: entry
points of the group `distill.teachers`, built-ins included); the backends, which speak only their
wire format (`openai_api`, `anthropic_api`, `local`, `none`) and declare their batch clients;
the layers over a backend (`retry` and `pacing`, `pricing`, `cache/`, `batch/`); and `stack`, the
one place that stacks them and hands a stage its `TeacherHandle`.

May import: `distill.errors`, `distill.config`, `distill.checks`, `distill.records`,
`distill.student` (the local backend runs a student-like model in process).
Must not import: stages, training, evaluation or the CLI. Stages see only a `TeacherHandle`: none
of them knows which backend, cache or batch queue stands behind it.
"""
