-- Spend and efficiency per platform per day. Ratios come from summed parts
-- (never an average of ratios); reach is not additive, so it is not here.
SELECT
  date,
  platform,
  sum(impressions)                                                       AS impressions,
  sum(clicks)                                                            AS clicks,
  sum(spend_usd)                                                         AS spend_usd,
  sum(conversions)                                                       AS conversions,
  CAST(sum(spend_usd) / NULLIF(sum(clicks), 0) AS DECIMAL(38, 6))        AS cpc_usd,
  CAST(sum(clicks) AS DOUBLE) / NULLIF(sum(impressions), 0)              AS ctr,
  CAST(sum(spend_usd) * 1000 / NULLIF(sum(impressions), 0) AS DECIMAL(38, 6)) AS cpm_usd
FROM d2a.ad_performance_daily
GROUP BY date, platform
