# Runs inside the sandbox: parse plot.R, then run it as Rscript would, with every plot that has no
# device of its own going to PNG files (_vc2_fig001.png, ...) instead of Rplots.pdf.
#     Rscript --vanilla r_driver.R EXIT_SYNTAX EXIT_RUNTIME    (cwd = the task's work dir)
# R cannot load status.py: the host passes the two exit codes it needs (vc2/eval/languages/r.py).
# Top-level values are printed as Rscript prints them, so a bare ggplot object draws, as it does for
# Rscript and in a notebook. Devices the script opened itself (png(), ggsave(), pdf()) write its own
# files; the host takes the first image file written (executors/common.written_image).
codes <- as.integer(commandArgs(trailingOnly = TRUE))
exprs <- tryCatch(parse("plot.R", keep.source = FALSE), error = function(e) {
  message("Error: ", conditionMessage(e))
  quit(save = "no", status = codes[1])
})
options(device = function(...) grDevices::png("_vc2_fig%03d.png", width = 7, height = 7, units = "in", res = 100))
ok <- tryCatch({
  for (e in exprs) {
    v <- withVisible(eval(e, envir = globalenv()))
    if (v$visible) print(v$value)
  }
  TRUE
}, error = function(e) {
  call <- conditionCall(e)
  message("Error", if (!is.null(call)) paste0(" in ", deparse(call)[1]), ": ", conditionMessage(e))
  FALSE
})
graphics.off()  # close every device, so that its file is complete
quit(save = "no", status = if (ok) 0 else codes[2])
