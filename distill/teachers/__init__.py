"""Teachers: the models that critique and rewrite the student's answers, behind one async seam.

`distill.teachers.base` defines the seam (`Request` -> `Completion`); each backend module
implements it for one provider. Pipeline stages only ever see a `Teacher`.
"""
