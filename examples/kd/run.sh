#!/usr/bin/env bash
# Knowledge distillation on the embedded MNIST digits (README.md here). Run from the repository root:
#   bash examples/kd/run.sh
# NC names the command (default: netcompress; e.g. NC="python -m netcompress" in a checkout).
set -euo pipefail
NC=${NC:-netcompress}
mkdir -p runs/kd
$NC mnist5k data

# 1. The teacher: the dense LeNet (skip this step and pass TEACHER= a model of the same net, e.g.
#    TEACHER=runs/lenet_pipeline/models/lenet_iter_5000.caffemodel after `netcompress pipeline`).
TEACHER=${TEACHER:-runs/kd/teacher_iter_2000.caffemodel}
if [ ! -f "$TEACHER" ]; then
  $NC train --solver examples/kd/teacher_solver.prototxt 2>runs/kd/teacher.log
fi

# 2. Its layers and blobs prefixed t_, its parameters frozen (lr_mult 0, decay_mult 0).
$NC rename_layers examples/mnist/lenet_train_test.prototxt "$TEACHER" \
    runs/kd/teacher_t.prototxt runs/kd/teacher_t.caffemodel --prefix t_ --freeze

# 3. The student from scratch, and 4. the same student distilled from the teacher.
$NC train --solver examples/kd/student_solver.prototxt 2>runs/kd/student.log
$NC train --solver examples/kd/student_kd_solver.prototxt --weights runs/kd/teacher_t.caffemodel \
    2>runs/kd/student_kd.log

# 5. Scores on the 1,000 test digits. The KD snapshot holds the t_ layers too; the student's own
#    prototxt takes only its layers from it.
score() { $NC test --model "$1" --weights "$2" --iterations 10 2>&1 | grep -o "accuracy = .*" | tail -1; }
echo "teacher          $(score examples/mnist/lenet_train_test.prototxt "$TEACHER")"
echo "student          $(score examples/kd/lenet_student_train_test.prototxt runs/kd/student_iter_2000.caffemodel)"
echo "student with KD  $(score examples/kd/lenet_student_train_test.prototxt runs/kd/student_kd_iter_2000.caffemodel)"
