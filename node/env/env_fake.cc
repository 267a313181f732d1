#include "node/env/env_fake.h"

namespace constellation {

Status FakeKvStore::Get(std::string_view key, std::string* value) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = live_.find(key);
  if (it == live_.end()) return Status::NotFound("kv get");
  *value = it->second;
  return Status::Ok();
}

Status FakeKvStore::Write(const Batch& batch, bool sync) {
  std::lock_guard<std::mutex> l(mu_);
  if (fail_count_ > 0) {
    --fail_count_;
    return fail_status_;
  }
  for (const Op& op : batch.ops()) {
    if (op.is_put) {
      live_[op.key] = op.value;
    } else {
      live_.erase(op.key);
    }
  }
  if (sync) {
    durable_ = live_;
    ++sync_count_;
  }
  return Status::Ok();
}

void FakeKvStore::HoldSyncs(bool hold) {
  {
    std::lock_guard<std::mutex> l(hold_mu_);
    hold_syncs_ = hold;
  }
  hold_cv_.notify_all();
}

Status FakeKvStore::Sync() {
  {
    std::unique_lock<std::mutex> h(hold_mu_);
    hold_cv_.wait(h, [&] { return !hold_syncs_; });
  }
  std::lock_guard<std::mutex> l(mu_);
  if (fail_syncs_ > 0) {
    --fail_syncs_;
    return fail_sync_status_;
  }
  durable_ = live_;
  ++sync_count_;
  return Status::Ok();
}

void FakeKvStore::FailNextSyncs(int count, Status status) {
  std::lock_guard<std::mutex> l(mu_);
  fail_syncs_ = count;
  fail_sync_status_ = std::move(status);
}

Status FakeKvStore::Scan(std::string_view start, std::string_view limit,
                         const std::function<bool(std::string_view, std::string_view)>& fn) {
  std::map<std::string, std::string, std::less<>> copy;
  {
    std::lock_guard<std::mutex> l(mu_);
    copy = live_;
  }
  for (auto it = copy.lower_bound(start); it != copy.end(); ++it) {
    if (!limit.empty() && it->first >= limit) break;
    if (!fn(it->first, it->second)) break;
  }
  return Status::Ok();
}

void FakeKvStore::HoldViewScans(bool hold) {
  {
    std::lock_guard<std::mutex> l(hold_mu_);
    hold_views_ = hold;
  }
  hold_cv_.notify_all();
}

void FakeKvStore::WaitForHeldViewScan() {
  std::unique_lock<std::mutex> h(hold_mu_);
  hold_cv_.wait(h, [&] { return views_held_ > 0; });
}

void FakeKvStore::WaitWhileViewsHeld() {
  std::unique_lock<std::mutex> h(hold_mu_);
  if (!hold_views_) return;
  ++views_held_;
  hold_cv_.notify_all();
  hold_cv_.wait(h, [&] { return !hold_views_; });
  --views_held_;
}

namespace {
class CopyView : public KvStore::View {
 public:
  CopyView(FakeKvStore* store, std::map<std::string, std::string, std::less<>> keys)
      : store_(store), keys_(std::move(keys)) {}
  Status Scan(std::string_view start, std::string_view limit,
              const std::function<bool(std::string_view, std::string_view)>& fn) override {
    store_->WaitWhileViewsHeld();
    for (auto it = keys_.lower_bound(start); it != keys_.end(); ++it) {
      if (!limit.empty() && it->first >= limit) break;
      if (!fn(it->first, it->second)) break;
    }
    return Status::Ok();
  }

 private:
  FakeKvStore* store_;
  const std::map<std::string, std::string, std::less<>> keys_;
};
}  // namespace

Result<std::unique_ptr<KvStore::View>> FakeKvStore::NewView() {
  std::lock_guard<std::mutex> l(mu_);
  return std::unique_ptr<View>(new CopyView(this, live_));
}

void FakeKvStore::Crash() {
  std::lock_guard<std::mutex> l(mu_);
  live_ = durable_;
}

void FakeKvStore::FailNextWrites(int count, Status status) {
  std::lock_guard<std::mutex> l(mu_);
  fail_count_ = count;
  fail_status_ = std::move(status);
}

namespace {
class SharedKvStore : public KvStore {
 public:
  explicit SharedKvStore(KvStore* kv) : kv_(kv) {}
  Status Get(std::string_view k, std::string* v) override { return kv_->Get(k, v); }
  Status Write(const Batch& b, bool sync) override { return kv_->Write(b, sync); }
  Status Sync() override { return kv_->Sync(); }
  Status Scan(std::string_view s, std::string_view l,
              const std::function<bool(std::string_view, std::string_view)>& fn) override {
    return kv_->Scan(s, l, fn);
  }
  Result<std::unique_ptr<View>> NewView() override { return kv_->NewView(); }

 private:
  KvStore* kv_;
};
}  // namespace

std::unique_ptr<KvStore> FakeKvStore::Share() { return std::make_unique<SharedKvStore>(this); }

}  // namespace constellation
