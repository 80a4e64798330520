/* configure/: the run's events, made once here for every file of the module (the back ends,
 * config: and run:, the session), and the first failure kept while the rest are told. */
#include "configure/internal.h"

#include <string.h>

static void emit(const struct configure_ctx *ctx, const struct configure_event *ev)
{
	if (ctx->o->event)
		ctx->o->event(ev, ctx->o->data);
}

void configure_say(const struct configure_ctx *ctx, enum configure_event_kind kind,
                   const char *step, const char *fmt, ...)
{
	if (!ctx->o->event)
		return;
	va_list ap;
	va_start(ap, fmt);
	char *text;
	if (vasprintf(&text, fmt, ap) < 0)
		abort();
	va_end(ap);
	emit(ctx, &(struct configure_event){.kind = kind, .step = step, .text = text});
	free(text);
}

void configure_step(const struct configure_ctx *ctx, const char *step, size_t done, size_t total)
{
	emit(ctx, &(struct configure_event){
	              .kind = CONFIGURE_STEP, .step = step, .done = done, .total = total});
}

void configure_say_tail(const struct configure_ctx *ctx, const char *step, const char *tail,
                        int max)
{
	const char *text = tail ? tail : "";
	const char *start = text + strlen(text);
	while (start > text && start[-1] == '\n')
		start--;
	const char *end = start;
	for (int k = 0; start > text; start--)
		if (start[-1] == '\n' && ++k == max)
			break;
	if (end == start)
		configure_say(ctx, CONFIGURE_DETAIL, step, "    (none)");
	while (start < end) {
		const char *nl = memchr(start, '\n', end - start);
		size_t len = nl ? (size_t)(nl - start) : (size_t)(end - start);
		configure_say(ctx, CONFIGURE_DETAIL, step, "    %.*s", (int)len, start);
		start += len + (nl ? 1 : 0);
	}
}

void configure_keep_first(const struct configure_ctx *ctx, int r, const struct mosaic_error *e,
                          int *first, struct mosaic_error *err)
{
	if (r == 0)
		return;
	if (*first == 0) {
		*first = mosaic_errorf(err, r, "%s", e->msg);
		return;
	}
	const char *text = e->msg;
	if (strncmp(text, "configure: ", 11) == 0)
		text += 11;
	configure_say(ctx, CONFIGURE_ERROR, NULL, "%s", text);
}

void configure_say_report(const struct configure_ctx *ctx, const char *step, const char *tail,
                          const char *advice)
{
	configure_say(ctx, CONFIGURE_DETAIL, step, "  last lines of its output:");
	configure_say_tail(ctx, step, tail, CONFIGURE_REPORT_LINES);
	configure_say(ctx, CONFIGURE_DETAIL, step, "  %s", advice);
}
