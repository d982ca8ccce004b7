;; Runs inside the sandbox: LilyPond's start-up (Guile, its Scheme modules, declarations-init.ly),
;; paid once, then one fork per score. Started by warm_server.py as
;;     lilypond <the cold run's options> -e '(load "lily_server.scm")' _vc2_none.ly
;; -e code runs at the top of lilypond-main, before any file; this loop never returns to it.
;; Protocol, one line each way: "DIR<TAB>LOG<TAB>CPU_S<TAB>DATA_BYTES<TAB>FSIZE_BYTES" in, the
;; child's exit status out. The child chdirs to DIR, logs to LOG, and processes DIR/score.ly the
;; way lilypond-all and lilypond-main do for one file, so its log and exit code are the cold run's.
;; Status 70: an exception escaped (our glue, not a score error, which lilypond logs and survives):
;; warm_server.py then reports the engine as broken and the task is run cold.
(use-modules (ice-9 rdelim))

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

(let loop ()
  (let ((line (read-line)))
    (if (eof-object? line) (primitive-exit 0))
    (let* ((f (string-split line #\tab))
           (num (lambda (i) (string->number (list-ref f i))))
           (pid (primitive-fork)))
      (if (= pid 0)
          (catch #t
            (lambda () (run-child (list-ref f 0) (list-ref f 1) (num 2) (num 3) (num 4)))
            (lambda (key . args)          ; ly:exit -> (exit N) throws 'quit; anything else is ours
              (flush-all-ports)
              (primitive-exit (if (and (eq? key 'quit) (pair? args) (integer? (car args))) (car args) 70))))
          (let ((st (cdr (waitpid pid))))
            (display (if (status:exit-val st) (status:exit-val st) (- (status:term-sig st))))
            (newline)
            (force-output)
            (loop))))))
