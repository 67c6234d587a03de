import ClusterCore

/// One event on its way to the bot's callback URL.
struct WebhookDelivery: Sendable {
    var message: Int32
    var body: [UInt8]
    /// POSTs made so far.
    var attempts = 0
    var dueAt: Int64
}

/// Webhook delivery (`emulator.delivery: "webhook"`): every dispatch is queued for a signed POST instead of going
/// to a session; one not acknowledged is delivered again with the same id, with backoff, up to `retryLimit` times.
extension EmulatorCore {
    /// Queues a dispatch for the callback URL (it waits until the URL is set and validated).
    mutating func queueWebhook(message index: Int, event: String, eventID: String, payload: String, now: Int64) {
        webhookSeq += 1
        var body = "{\"id\":"
        JSONValue.writeQuoted(eventID, into: &body)
        body += ",\"op\":0,\"d\":\(payload),\"s\":\(webhookSeq),\"t\":\"\(event)\"}"
        webhookQueue.append(WebhookDelivery(message: Int32(index), body: Array(body.utf8), dueAt: now))
        messages[index].holders += 1
        webhookQueuedSincePoke = true
    }

    /// Whether deliveries were queued since the last call (the delivery loop is then poked).
    mutating func takeWebhookQueued() -> Bool {
        defer { webhookQueuedSincePoke = false }
        return webhookQueuedSincePoke
    }

    /// The next delivery due at `now`, first attempts in order after retries that are due; or when the next retry
    /// is due.
    mutating func takeDueWebhook(now: Int64) -> (WebhookDelivery?, nextDue: Int64?) {
        if let first = webhookRetries.first, first.dueAt <= now {
            return (webhookRetries.popFirst(), nil)
        }
        if webhookHead < webhookQueue.count {
            let delivery = webhookQueue[webhookHead]
            webhookHead += 1
            if webhookHead >= 4096 {
                webhookQueue.removeFirst(webhookHead)
                webhookHead = 0
            }
            // The first POST delivers it: from here, no reply within the grace counts as unreplied.
            markDelivered(Int(delivery.message), now: now, releasingHolder: true)
            return (delivery, nil)
        }
        return (nil, webhookRetries.first?.dueAt)
    }

    /// How a POST of `delivery` ended.
    mutating func finishWebhook(_ delivery: WebhookDelivery, acked: Bool, now: Int64) {
        stats.webhookPosts += 1
        if acked {
            stats.webhookAcked += 1
            return
        }
        stats.webhookNotAcked += 1
        var next = delivery
        next.attempts += 1
        guard next.attempts <= config.webhook.retryLimit else {
            stats.webhookGaveUp += 1
            return
        }
        // Doubling, capped (both bounded by the configuration: no overflow).
        let shift = min(next.attempts - 1, 30)
        let (doubled, overflow) = config.webhook.retryBase.nanoseconds.multipliedReportingOverflow(by: Int64(1) << shift)
        let delay = overflow ? config.webhook.retryMax.nanoseconds : min(doubled, config.webhook.retryMax.nanoseconds)
        next.dueAt = now + delay
        webhookRetries.insert(next)
        stats.webhookRetries += 1
    }

    /// Deliveries not yet acknowledged or given up (queued, or waiting for a retry).
    var webhookWaiting: Int { webhookQueue.count - webhookHead + webhookRetries.count }
}

/// Deliveries waiting for a retry, earliest due first: a binary heap (while the bot asks for retries, every event
/// may be here; a scan per delivery would be quadratic).
struct RetryQueue: Sendable {
    private var heap: [WebhookDelivery] = []

    var count: Int { heap.count }
    var first: WebhookDelivery? { heap.first }

    mutating func insert(_ delivery: WebhookDelivery) {
        heap.append(delivery)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].dueAt < heap[parent].dueAt else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func popFirst() -> WebhookDelivery? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count && heap[left].dueAt < heap[smallest].dueAt { smallest = left }
            if right < heap.count && heap[right].dueAt < heap[smallest].dueAt { smallest = right }
            guard smallest != parent else { break }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}
