/* The ctorch command-line tool: shared option parsing and the command entry points.
 * Exit codes: 0 success, 1 runtime failure, 2 usage or input error. */
#ifndef CT_CLI_H
#define CT_CLI_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

enum { CLI_OK = 0, CLI_RUNTIME = 1, CLI_USAGE = 2 };

/* OPT_LIST: a string (const char **) to which a value given again is appended after a ','
 * ("--freeze a. --freeze b." and "--freeze a.,b." both give "a.,b."); see cli_list_next. */
typedef enum { OPT_FLAG, OPT_INT, OPT_DOUBLE, OPT_STRING, OPT_LIST } cli_opt_type;

typedef struct {
    const char *name; /* "--epochs" */
    cli_opt_type type;
    void *dest;       /* int* for FLAG, int64_t* for INT, double* for DOUBLE, const char** */
    double min, max;  /* accepted range for numbers (inclusive) */
    int seen;
} cli_opt;

/* Parses argv against opts; positional arguments are stored in pos (up to max_pos).
 * Prints an error naming the option and `ctorch help CMD` and returns CLI_USAGE on
 * unknown options, missing or malformed values. */
int cli_parse(const char *cmd, int argc, char **argv, cli_opt *opts, int nopts, const char **pos,
              int max_pos, int *npos);
/* The items of a list option's value ("a.,b."), one per call: copies the next item into
 * item (at most n - 1 characters) and returns the rest after it, or NULL at the end. Empty
 * items are skipped. */
const char *cli_list_next(const char *list, char *item, size_t n);
/* Prints "ctorch CMD: message" to stderr; returns code. */
int cli_fail(const char *cmd, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* " (rank R on HOST)" in a data-parallel job, else "": after the command in messages. */
extern char cli_rank_tag[300];
/* Validates a string against a list of choices; prints the choices on failure. */
int cli_choice(const char *cmd, const char *opt, const char *value, const char *const *choices);

/* JSON output: objects built with json_pack, printed on one line with ", " and ": "
 * between items and the keys in the order given. */
/* v as printf's fmt (e.g. "%.6f") rounds it, as a JSON number; null when v is not finite
 * (JSON has no NaN or infinity). */
json_t *cli_json_number(double v, const char *fmt);
/* obj as one line ending in '\n' (malloc'd), or NULL when out of memory; releases obj
 * (NULL is fine: json_pack's failure). */
char *cli_json_line(json_t *obj);
/* Prints obj as one line on stdout and releases it; CLI_OK, or CLI_RUNTIME with a message. */
int cli_json_print(const char *cmd, json_t *obj);

int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_download(int argc, char **argv);
int cmd_archive(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_launch(int argc, char **argv);
int cmd_doctor(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_help(int argc, char **argv);
void cli_print_version(void);

/* ctorch train's options, for `ctorch launch` (src/cli/cmd_train.c): the option named by
 * the first len characters of name ("--threads"): TRAIN_OPT_UNKNOWN, TRAIN_OPT_RESULT
 * (recorded in the run; --resume refuses another value), TRAIN_OPT_RESUMABLE (recorded, and
 * --resume takes it from the command line: FREE options, --epochs) or TRAIN_OPT_LOCAL
 * (--run-dir, --resume); *takes_value whether a value follows it. */
enum { TRAIN_OPT_UNKNOWN = -1, TRAIN_OPT_RESULT, TRAIN_OPT_RESUMABLE, TRAIN_OPT_LOCAL };
int cli_train_option_kind(const char *name, size_t len, int *takes_value);
int cli_command_help(const char *cmd); /* CLI_USAGE for unknown */

#endif
