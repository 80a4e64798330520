/* pipeline/: progress and what each step did, as events for the caller to show: the library
 * formats a line once and never prints it. */
#include "pipeline/internal.h"

void pipeline_say(struct pipeline_events *ev, enum pipeline_event_kind kind, const char *step,
                  const char *fmt, ...)
{
	if (!ev || !ev->fn)
		return;
	char text[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	const struct pipeline_event e = {.kind = kind, .step = step, .text = text};
	ev->fn(&e, ev->data);
}

void pipeline_progress(struct pipeline_events *ev, const char *step, const char *item,
                       uint64_t done, uint64_t total, uint64_t bytes, uint64_t total_bytes)
{
	if (!ev || !ev->fn)
		return;
	const struct pipeline_event e = {.kind = PIPELINE_PROGRESS,
	                                 .step = step,
	                                 .item = item,
	                                 .done = done,
	                                 .total = total,
	                                 .bytes = bytes,
	                                 .total_bytes = total_bytes};
	ev->fn(&e, ev->data);
}
