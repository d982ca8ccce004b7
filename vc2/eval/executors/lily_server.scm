;; Runs inside the sandbox: LilyPond's start-up (Guile, its Scheme modules, declarations-init.ly),
;; paid once, then one fork per score. Started by warm_server.py as
;;     lilypond <the cold run's options> -e '(load "lily_server.scm")' _vc2_none.ly
;; -e code runs at the top of lilypond-main, before any file; this loop never returns to it.
;; Protocol, one line each way: "DIR<TAB>LOG<TAB>CPU_S<TAB>DATA_BYTES<TAB>FSIZE_BYTES" in, the
;; child's exit status out. The child chdirs to DIR, logs to LOG, and processes DIR/score.ly the
;; way lilypond-all and lilypond-main do for one file, so its log and exit code are the cold run's.
;; Status 70: an exception escaped (our glue, not a score error, which lilypond logs and survives):
;; warm_server.py then reports the engine as broken and the task is run cold.
;; Isolation, as warm_server.py does it for Python: this process is not dumpable; each score runs in a
;; user + pid namespace of its own (unshare(2) through Guile's C FFI), under a small init (pid 1 there)
;; that reports the score process's wait status on a pipe; the score process has no capabilities and
;; none of our fds, and everything it leaves is killed when the init exits.
(use-modules (ice-9 rdelim) (ice-9 ftw) (system foreign) (rnrs bytevectors))

(define libc (dynamic-link))
(define (c-function name ret args) (pointer->procedure ret (dynamic-func name libc) args))
(define c-prctl (c-function "prctl" int (list int unsigned-long unsigned-long unsigned-long unsigned-long)))
(define c-unshare (c-function "unshare" int (list int)))
(define c-capset (c-function "capset" int (list '* '*)))
(if (not (zero? (c-prctl 4 0 0 0 0)))   ; PR_SET_DUMPABLE 0
    (error "prctl(PR_SET_DUMPABLE) failed"))

(define (write-file path text)
  (call-with-output-file path (lambda (port) (display text port))))

(define (enter-task-namespaces)         ; CLONE_NEWUSER | CLONE_NEWPID, our uid/gid mapped to themselves
  (let ((uid (getuid)) (gid (getgid)))
    (c-prctl 4 1 0 0 0)                 ; dumpable for a moment: our own /proc/self maps must be writable
    (if (not (zero? (c-unshare (logior #x10000000 #x20000000))))
        (error "unshare failed"))
    (write-file "/proc/self/setgroups" "deny")
    (write-file "/proc/self/uid_map" (format #f "~a ~a 1" uid uid))
    (write-file "/proc/self/gid_map" (format #f "~a ~a 1" gid gid))
    (c-prctl 4 0 0 0 0)))

(define (drop-capabilities)             ; capset(v3 header, two zeroed {effective, permitted, inheritable})
  (let ((header (make-bytevector 8 0)) (data (make-bytevector 24 0)))
    (bytevector-u32-native-set! header 0 #x20080522)
    (if (not (zero? (c-capset (bytevector->pointer header) (bytevector->pointer data))))
        (error "capset failed"))))

(define (close-other-fds)               ; keep 0, 1, 2 only
  (for-each (lambda (name)
              (let ((fd (string->number name)))
                (if (and fd (> fd 2)) (false-if-exception (close-fdes fd)))))
            (or (scandir "/proc/self/fd") '())))

(ly:parse-init "declarations-init.ly")   ; what lilypond-all does before its first file
(display "ready") (newline) (force-output)

(define (run-child dir log cpu data fsize)
  (chdir dir)
  (let ((fd (open-fdes log (logior O_WRONLY O_CREAT O_TRUNC) #o600))
        (null (open-fdes "/dev/null" O_RDONLY)))
    (dup2 null 0) (dup2 fd 1) (dup2 fd 2))
  (setenv "HOME" dir)
  (setenv "TMPDIR" (string-append dir "/.tmp"))
  (setrlimit 'cpu cpu cpu)
  (setrlimit 'data data data)
  (setrlimit 'fsize fsize fsize)
  (ly:reset-all-fonts)
  (let ((failed #f))
    ((@@ (lily) lilypond-file) (lambda (key file) (set! failed #t)) "score.ly")
    (ly:check-expected-warnings)
    (flush-all-ports)
    (if failed                          ; lilypond-main's ending, messages included
        (ly:error "failed files: ~S" "score.ly")      ; exits 1
        ((@@ (lily) ly:exit) 0 #f))))

(define (status->code st)                ; the exit code as Python's waitstatus_to_exitcode gives it
  (if (status:exit-val st) (status:exit-val st) (- (status:term-sig st))))

(define (score-process f)               ; pid 2 of the task's namespace: never returns
  (catch #t
    (lambda ()
      (drop-capabilities)
      (close-other-fds)
      (run-child (list-ref f 0) (list-ref f 1) (num f 2) (num f 3) (num f 4)))
    (lambda (key . args)          ; ly:exit -> (exit N) throws 'quit; anything else is ours
      (flush-all-ports)
      (primitive-exit (if (and (eq? key 'quit) (pair? args) (integer? (car args))) (car args) 70)))))

(define (task-init f report)            ; pid 1 of the task's namespace: run the score, reap, report
  (let ((t (primitive-fork)))
    (if (= t 0)
        (begin (close-port report) (score-process f))
        (let wait ()
          (let ((r (waitpid WAIT_ANY)))
            (if (= (car r) t)
                (begin (display (status->code (cdr r)) report) (newline report) (force-output report)
                       (primitive-exit 0))
                (wait)))))))

(define (num f i) (string->number (list-ref f i)))

(let loop ()
  (let ((line (read-line)))
    (if (eof-object? line) (primitive-exit 0))
    (let* ((f (string-split line #\tab))
           (report (pipe))
           (pid (primitive-fork)))
      (if (= pid 0)
          (catch #t
            (lambda ()
              (close-port (car report))
              (enter-task-namespaces)
              (let ((init (primitive-fork)))
                (if (= init 0)
                    (task-init f (cdr report))
                    (primitive-exit (let ((st (cdr (waitpid init)))) (if (eqv? (status:exit-val st) 0) 0 70))))))
            (lambda args (primitive-exit 70)))
          (begin
            (close-port (cdr report))
            (let* ((st (cdr (waitpid pid)))
                   (reported (read-line (car report))))
              (close-port (car report))
              (display (if (and (eqv? (status:exit-val st) 0) (string? reported)) reported 70))
              (newline)
              (force-output)
              (loop)))))))
